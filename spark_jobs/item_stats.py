"""Point-in-time daily item statistics for Feast (the S_i of paper 3.1).

A row of item i stamped at D (00:00:00 UTC of day D) holds what was known at that instant:
pv and clicks of all events of i strictly before D (every split: statistics are point-in-time,
as in production), the same over the recent window (the ``stats.recent_window_days`` days
before D: days D-W .. D-1), smoothed click rates (clicks + a*prior) / (pv + a), and the PV
bucket of pv. An event at exactly 00:00:00 of day d belongs to day d, so the row stamped at
that same instant does not count it.

Rows exist only where a value changes: on day d+1 after each day d with events of the item
(pv grows) and on day d+W+1 when those events leave the recent window (pv_recent falls). Every
such row differs from the one before it, so no other day needs a row. Feast joins each sample
at time t to the latest row stamped <= t; before an item's first row it has no statistics.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: import from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.schema import ITEM_STATS, SAMPLES
from spark_jobs.columns import day_start, pv_bucket, smoothed_ctr, utc_day
from spark_jobs.tables import read_table, write_table


def daily_counts(samples: DataFrame) -> DataFrame:
    """(item_id, day, pv, clicks) for every UTC day with events of the item."""
    return samples.groupBy("item_id", utc_day(F.col("event_timestamp")).alias("day")).agg(
        F.count(F.lit(1)).alias("pv"), F.sum("label").alias("clicks")
    )


def snapshot_counts(daily: DataFrame, recent_window_days: int) -> DataFrame:
    """(item_id, day, pv, clicks, pv_recent, clicks_recent) on each day where a value changes.

    Counts of a row at day D use event days < D (all) and D-W <= day < D (recent).
    """
    w = recent_window_days
    marks = daily.select("item_id", "day").distinct()
    snapshot_days = marks.select("item_id", (F.col("day") + 1).alias("day")).unionByName(
        marks.select("item_id", (F.col("day") + w + 1).alias("day"))
    )
    timeline = (
        daily.withColumn("snapshot", F.lit(0))
        .unionByName(
            snapshot_days.select(
                "item_id", "day", F.lit(0).alias("pv"), F.lit(0).alias("clicks"),
                F.lit(1).alias("snapshot"),
            ),
            allowMissingColumns=False,
        )
        .groupBy("item_id", "day")
        .agg(F.sum("pv").alias("pv_day"), F.sum("clicks").alias("clicks_day"),
             F.max("snapshot").alias("snapshot"))
    )
    by_day = Window.partitionBy("item_id").orderBy("day")
    before = by_day.rangeBetween(Window.unboundedPreceding, -1)
    recent = by_day.rangeBetween(-w, -1)
    zero = F.lit(0).cast("bigint")
    return timeline.select(
        "item_id",
        "day",
        "snapshot",
        F.coalesce(F.sum("pv_day").over(before), zero).alias("pv"),
        F.coalesce(F.sum("clicks_day").over(before), zero).alias("clicks"),
        F.coalesce(F.sum("pv_day").over(recent), zero).alias("pv_recent"),
        F.coalesce(F.sum("clicks_day").over(recent), zero).alias("clicks_recent"),
    ).filter(F.col("snapshot") == 1).drop("snapshot")


def with_rates(
    counts: DataFrame, prior: float, strength: float, pv_buckets: Sequence[int]
) -> DataFrame:
    """Add the smoothed rates, the PV bucket and the row's timestamp (00:00 UTC of its day)."""
    return counts.select(
        "item_id",
        day_start(F.col("day")).alias("event_timestamp"),
        "pv",
        "clicks",
        smoothed_ctr(F.col("clicks"), F.col("pv"), prior, strength).alias("ctr"),
        "pv_recent",
        "clicks_recent",
        smoothed_ctr(F.col("clicks_recent"), F.col("pv_recent"), prior, strength).alias("ctr_recent"),
        pv_bucket(F.col("pv"), pv_buckets).alias("pv_bucket"),
    )


def item_stats(samples: DataFrame, cfg: Config) -> DataFrame:
    conf = cfg.stats
    return (
        samples.transform(daily_counts)
        .transform(snapshot_counts, conf.recent_window_days)
        .transform(with_rates, conf.ctr_prior, conf.ctr_prior_strength, conf.pv_buckets)
    )


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    lake = Lake.from_config(cfg)
    samples = read_table(spark, lake.spark("samples"), SAMPLES)
    n = write_table(item_stats(samples, cfg), lake.spark("item_stats"), ITEM_STATS)
    return {"rows": {"item_stats": n}}


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.runner import job_main

    return job_main("item_stats", argv)


if __name__ == "__main__":
    sys.exit(main())
