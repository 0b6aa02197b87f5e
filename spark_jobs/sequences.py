"""Behaviour sequences: for each (user, sample time t), the user's last N clicks before t.

A sequence holds the item ids of the user's clicks (label 1, every split: point-in-time, as in
production) with timestamp strictly before t; clicks at t itself, the sample's own included,
are left out. Oldest first, most recent last, clicks at one timestamp ordered by item id;
left-padded with PADDING_ITEM_ID (0) to ``sequences.max_len``; seq_len counts the real ids.
One row per distinct (user, event_timestamp) of samples, plus one per user stamped 1 second
after the user's last event that holds the whole current sequence (for online serving).

The same rows carry the user's statistics (P_u of paper 3.1) under the same point-in-time rule:
user_pv and user_clicks count the user's events and clicks strictly before t (every split), and
user_ctr is their smoothed rate (stats.ctr_prior, stats.ctr_prior_strength), as for items.
Unlike item_stats (daily snapshots) they are exact to the event: MovieLens users rate in bursts,
so a daily snapshot would hide a whole session's history from its own later samples.

Cost, O(n log n) rather than O(n^2): one window sum over each user's time-ordered events and
clicks gives each sample time its number c of earlier clicks; each user's clicks are collected
once into one ordered array, and each sample slices positions c-N+1 .. c out of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: import from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.schema import PADDING_ITEM_ID, SAMPLES, SEQUENCES
from spark_jobs.columns import smoothed_ctr
from spark_jobs.tables import read_table, write_table


def serving_time(last_event: Column) -> Column:
    """The time of a user's serving row: 1 second after their last event (so it holds them all).
    The streaming job (``spark_jobs/item_stats_stream.py``) stamps its user rows the same way."""
    return last_event + F.expr("INTERVAL 1 SECOND")


def left_padded(item_ids: Column, seq_len: Column, max_len: int) -> Column:
    """``item_ids`` (``seq_len`` of them, at most ``max_len``) left-padded with PADDING_ITEM_ID."""
    padding = F.array_repeat(F.lit(PADDING_ITEM_ID).cast("bigint"),
                             (F.lit(max_len) - seq_len).cast("int"))
    return F.concat(padding, item_ids)


def sequence_times(samples: DataFrame) -> DataFrame:
    """(user_id, event_timestamp): each distinct sample time, and last event + 1 s per user."""
    times = samples.select("user_id", "event_timestamp").distinct()
    serving = samples.groupBy("user_id").agg(
        serving_time(F.max("event_timestamp")).alias("event_timestamp")
    )
    return times.unionByName(serving)


def history_before(times: DataFrame, samples: DataFrame) -> DataFrame:
    """Add ``pv_before`` and ``n_before``: the user's events and clicks strictly before each time.

    At equal timestamps the time sorts before the events, so they are not counted.
    """
    events = samples.select("user_id", "event_timestamp", F.lit(1).alias("is_event"),
                            F.col("label").cast("bigint").alias("is_click"))
    timeline = times.select("user_id", "event_timestamp", F.lit(0).alias("is_event"),
                            F.lit(0).cast("bigint").alias("is_click")).unionByName(events)
    upto = (
        Window.partitionBy("user_id")
        .orderBy("event_timestamp", "is_event")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    return (
        timeline.withColumn("pv_before", F.sum("is_event").over(upto).cast("bigint"))
        .withColumn("n_before", F.sum("is_click").over(upto).cast("bigint"))
        .filter(F.col("is_event") == 0)
        .drop("is_event", "is_click")
    )


def click_arrays(samples: DataFrame) -> DataFrame:
    """(user_id, clicked): each user's clicked item ids ordered by (time, item id)."""
    ordered = F.array_sort(F.collect_list(F.struct("event_timestamp", "item_id")))
    return samples.filter(F.col("label") == 1).groupBy("user_id").agg(
        F.transform(ordered, lambda c: c["item_id"]).alias("clicked")
    )


def last_clicks(counted: DataFrame, arrays: DataFrame, max_len: int, prior: float,
                strength: float) -> DataFrame:
    """SEQUENCES rows: clicks n_before-N+1 .. n_before, and the user's statistics."""
    seq_len = F.least(F.col("n_before"), F.lit(max_len))
    start = F.col("n_before") - seq_len + 1  # 1-based
    recent = F.when(seq_len > 0, F.slice("clicked", start, seq_len)).otherwise(
        F.array().cast("array<bigint>")
    )
    return counted.join(arrays, "user_id", "left").select(
        "user_id",
        "event_timestamp",
        left_padded(recent, seq_len, max_len).alias("seq_item_ids"),
        seq_len.alias("seq_len"),
        F.col("pv_before").alias("user_pv"),
        F.col("n_before").alias("user_clicks"),
        smoothed_ctr(F.col("n_before"), F.col("pv_before"), prior, strength).alias("user_ctr"),
    )


def sequences(samples: DataFrame, max_len: int, ctr_prior: float,
              ctr_prior_strength: float) -> DataFrame:
    counted = sequence_times(samples).transform(history_before, samples)
    return last_clicks(counted, click_arrays(samples), max_len, ctr_prior, ctr_prior_strength)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    lake = Lake.from_config(cfg)
    samples = read_table(spark, lake.spark("samples"), SAMPLES).select(
        "user_id", "item_id", "label", "event_timestamp"
    )
    n = write_table(
        sequences(samples, cfg.sequences.max_len, cfg.stats.ctr_prior, cfg.stats.ctr_prior_strength), lake.spark("sequences"), SEQUENCES)
    return {"rows": {"sequences": n}}


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.runner import job_main

    return job_main("sequences", argv)


if __name__ == "__main__":
    sys.exit(main())
