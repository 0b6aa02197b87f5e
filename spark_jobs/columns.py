"""Column expressions shared by the jobs."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column
from pyspark.sql import functions as F

from saviorrec.config import SECONDS_PER_DAY


def pv_bucket(pv: Column, lower_edges: Sequence[int]) -> Column:
    """Index of the last lower edge <= pv (edges start at 0, so pv >= 0 has a bucket)."""
    above = [F.when(pv >= F.lit(edge), 1).otherwise(0) for edge in lower_edges]
    return (sum(above[1:], above[0]) - 1).cast("bigint")


def utc_period(ts: Column, period_seconds: int = SECONDS_PER_DAY) -> Column:
    """Index of the UTC period of ``period_seconds`` (a day, an hour) holding a timestamp,
    counted from 1970-01-01 whatever the session time zone.

    An event at exactly the start of period p belongs to period p.
    """
    return F.floor(F.unix_micros(ts) / F.lit(period_seconds * 1_000_000)).cast("bigint")


def period_start(period: Column, period_seconds: int = SECONDS_PER_DAY) -> Column:
    """The timestamp of the start of a period index (00:00:00 UTC of a day number)."""
    return F.timestamp_seconds(period * F.lit(period_seconds))


def smoothed_ctr(clicks: Column, pv: Column, prior: float, strength: float) -> Column:
    """(clicks + a * prior) / (pv + a): the prior for an unseen item, the raw rate in the limit."""
    return ((clicks + F.lit(strength * prior)) / (pv + F.lit(strength))).cast("float")
