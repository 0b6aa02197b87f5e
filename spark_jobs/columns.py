"""Column expressions shared by the jobs."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column
from pyspark.sql import functions as F

SECONDS_PER_DAY = 86_400


def pv_bucket(pv: Column, lower_edges: Sequence[int]) -> Column:
    """Index of the last lower edge <= pv (edges start at 0, so pv >= 0 has a bucket)."""
    above = [F.when(pv >= F.lit(edge), 1).otherwise(0) for edge in lower_edges]
    return (sum(above[1:], above[0]) - 1).cast("bigint")


def utc_day(ts: Column) -> Column:
    """Days since 1970-01-01 of a timestamp, in UTC whatever the session time zone.

    An event at exactly 00:00:00 of day d belongs to day d.
    """
    return F.floor(F.unix_micros(ts) / F.lit(SECONDS_PER_DAY * 1_000_000)).cast("bigint")


def day_start(day: Column) -> Column:
    """The timestamp of 00:00:00 UTC of a day number."""
    return F.timestamp_seconds(day * F.lit(SECONDS_PER_DAY))


def smoothed_ctr(clicks: Column, pv: Column, prior: float, strength: float) -> Column:
    """(clicks + a * prior) / (pv + a): the prior for an unseen item, the raw rate in the limit."""
    return ((clicks + F.lit(strength * prior)) / (pv + F.lit(strength))).cast("float")
