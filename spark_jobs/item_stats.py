"""Point-in-time item statistics for Feast (the S_i of paper 3.1), one snapshot per period.

The period is ``stats.snapshot_cadence`` (daily by default, or hourly), the one cadence that
this job and the streaming job (``spark_jobs/item_stats_stream.py``) both honour. A row of item i
stamped at P (the start of a UTC period: 00:00:00 of a day, or the top of an hour) holds what
was known at that instant: pv and clicks of all events of i strictly before P (every split:
statistics are point-in-time, as in production), the same over the recent window (the
``stats.recent_window_days`` before P: periods P-W .. P-1 with W = ``recent_window_periods``),
smoothed click rates (clicks + a*prior) / (pv + a), and the PV bucket of pv. An event at exactly
the start of period p belongs to period p, so the row stamped at that same instant does not
count it.

Rows exist only where a value changes: at period p+1 after each period p with events of the
item (pv grows) and at period p+W+1 when those events leave the recent window (pv_recent
falls). Every such row differs from the one before it, so no other period needs a row. Feast
joins each sample at time t to the latest row stamped <= t; before an item's first row it has no
statistics.
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

from saviorrec.config import SECONDS_PER_DAY, Config
from saviorrec.lake import Lake
from saviorrec.schema import ITEM_STATS, SAMPLES
from spark_jobs.columns import period_start, pv_bucket, smoothed_ctr, utc_period
from spark_jobs.tables import read_table, write_table


def period_counts(samples: DataFrame, period_seconds: int = SECONDS_PER_DAY) -> DataFrame:
    """(item_id, period, pv, clicks) for every UTC period with events of the item."""
    return samples.groupBy(
        "item_id", utc_period(F.col("event_timestamp"), period_seconds).alias("period")
    ).agg(F.count(F.lit(1)).alias("pv"), F.sum("label").alias("clicks"))


def snapshot_counts(counts: DataFrame, window_periods: int) -> DataFrame:
    """(item_id, period, pv, clicks, pv_recent, clicks_recent) at each period where a value
    changes.

    Counts of a row at period P use event periods < P (all) and P-W <= period < P (recent).
    """
    w = window_periods
    marks = counts.select("item_id", "period").distinct()
    snapshot_periods = marks.select("item_id", (F.col("period") + 1).alias("period")).unionByName(
        marks.select("item_id", (F.col("period") + w + 1).alias("period"))
    )
    timeline = (
        counts.withColumn("snapshot", F.lit(0))
        .unionByName(
            snapshot_periods.select(
                "item_id", "period", F.lit(0).alias("pv"), F.lit(0).alias("clicks"),
                F.lit(1).alias("snapshot"),
            ),
            allowMissingColumns=False,
        )
        .groupBy("item_id", "period")
        .agg(F.sum("pv").alias("pv_period"), F.sum("clicks").alias("clicks_period"),
             F.max("snapshot").alias("snapshot"))
    )
    by_period = Window.partitionBy("item_id").orderBy("period")
    before = by_period.rangeBetween(Window.unboundedPreceding, -1)
    recent = by_period.rangeBetween(-w, -1)
    zero = F.lit(0).cast("bigint")
    return timeline.select(
        "item_id",
        "period",
        "snapshot",
        F.coalesce(F.sum("pv_period").over(before), zero).alias("pv"),
        F.coalesce(F.sum("clicks_period").over(before), zero).alias("clicks"),
        F.coalesce(F.sum("pv_period").over(recent), zero).alias("pv_recent"),
        F.coalesce(F.sum("clicks_period").over(recent), zero).alias("clicks_recent"),
    ).filter(F.col("snapshot") == 1).drop("snapshot")


def with_rates(
    counts: DataFrame, prior: float, strength: float, pv_buckets: Sequence[int],
    period_seconds: int = SECONDS_PER_DAY,
) -> DataFrame:
    """Add the smoothed rates, the PV bucket and the row's timestamp (the start of its period)."""
    return counts.select(
        "item_id",
        period_start(F.col("period"), period_seconds).alias("event_timestamp"),
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
        samples.transform(period_counts, conf.snapshot_seconds)
        .transform(snapshot_counts, conf.recent_window_periods)
        .transform(with_rates, conf.ctr_prior, conf.ctr_prior_strength, conf.pv_buckets,
                   conf.snapshot_seconds)
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
