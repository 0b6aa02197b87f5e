"""Labelled samples with the per-user temporal split, and each item's train PV bucket.

Split rule (deterministic): a user's events are ordered by (event_timestamp, item_id, rating);
events at the same timestamp are therefore ordered by item id. With n events,
``n_test = floor(n * test_fraction)`` and ``n_valid = floor(n * valid_fraction)`` (a 1e-9 slack
absorbs float error, so 0.7 * 10 gives 7): the last n_test events are test, the n_valid before
them valid, the rest train. Rounding down keeps a user with few events in train (a user with
fewer than 1 / test_fraction events has no test event). Point-in-time features use only events
strictly before a sample, so a same-timestamp tie split across a boundary leaks nothing.

Bad events (null ids, rating or timestamp; item id < 1; an item id missing from items) are
counted per reason; ``data.bad_rows = error`` stops at the first with its values, ``skip``
drops them and reports the counts.
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
from saviorrec.schema import EVENTS, ITEM_PV, ITEMS, SAMPLES, TEST, TRAIN, VALID
from spark_jobs.columns import pv_bucket
from spark_jobs.tables import read_table, write_table

BAD_REASON = "bad_reason"
_SLACK = 1e-9


def tag_bad_events(events: DataFrame, items: DataFrame) -> DataFrame:
    """Add ``bad_reason`` (null for a good event): the first failed check of each row."""
    known = items.select(F.col("item_id").alias("_known_item")).distinct()
    joined = events.join(F.broadcast(known), events["item_id"] == known["_known_item"], "left")
    reason = F.when(F.col("user_id").isNull(), "null user_id")
    for column in ("item_id", "rating", "event_timestamp"):
        reason = reason.when(F.col(column).isNull(), f"null {column}")
    reason = reason.when(F.col("item_id") < 1, "item_id < 1").when(
        F.col("_known_item").isNull(), "item_id not in items"
    )
    return joined.withColumn(BAD_REASON, reason).drop("_known_item")


def with_label(events: DataFrame, click_threshold: float) -> DataFrame:
    """label = 1 when rating >= click_threshold, else 0."""
    return events.withColumn(
        "label", (F.col("rating") >= F.lit(click_threshold)).cast("bigint")
    )


def with_split(events: DataFrame, valid_fraction: float, test_fraction: float) -> DataFrame:
    """Add ``split`` (train | valid | test) by each user's event order (module docstring)."""
    order = Window.partitionBy("user_id").orderBy("event_timestamp", "item_id", "rating")
    per_user = Window.partitionBy("user_id")
    n = F.count(F.lit(1)).over(per_user)
    n_test = F.floor(n * F.lit(test_fraction) + F.lit(_SLACK))
    n_valid = F.floor(n * F.lit(valid_fraction) + F.lit(_SLACK))
    position = F.row_number().over(order) - 1  # 0-based
    split = (
        F.when(position >= n - n_test, TEST)
        .when(position >= n - n_test - n_valid, VALID)
        .otherwise(TRAIN)
    )
    return events.withColumn("split", split)


def item_pv(samples: DataFrame, items: DataFrame, pv_buckets: Sequence[int]) -> DataFrame:
    """Every item of ``items`` with its number of train samples and that number's bucket."""
    train_pv = (
        samples.filter(F.col("split") == TRAIN).groupBy("item_id").agg(F.count(F.lit(1)).alias("train_pv"))
    )
    return (
        items.select("item_id")
        .distinct()
        .join(train_pv, "item_id", "left")
        .withColumn("train_pv", F.coalesce(F.col("train_pv"), F.lit(0)).cast("bigint"))
        .withColumn("pv_bucket", pv_bucket(F.col("train_pv"), pv_buckets))
    )


def bad_row_counts(tagged: DataFrame) -> dict[str, int]:
    rows = tagged.filter(F.col(BAD_REASON).isNotNull()).groupBy(BAD_REASON).count().collect()
    return {row[BAD_REASON]: int(row["count"]) for row in sorted(rows)}


def _first_bad(tagged: DataFrame) -> str:
    row = tagged.filter(F.col(BAD_REASON).isNotNull()).orderBy(*EVENTS.names).first()
    assert row is not None
    values = ", ".join(f"{name}={row[name]!r}" for name in EVENTS.names)
    return f"events: bad row ({values}): {row[BAD_REASON]}"


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    lake = Lake.from_config(cfg)
    events = read_table(spark, lake.events, EVENTS)
    items = read_table(spark, lake.items, ITEMS)
    tagged = events.transform(tag_bad_events, items).cache()
    bad = bad_row_counts(tagged)
    if bad and cfg.data.bad_rows == "error":
        raise ValueError(f"{_first_bad(tagged)} ({sum(bad.values())} bad rows: {bad}; "
                         "set data.bad_rows: skip to drop and count them)")
    samples = (
        tagged.filter(F.col(BAD_REASON).isNull())
        .transform(with_label, cfg.labels.click_threshold)
        .transform(with_split, cfg.split.valid_fraction, cfg.split.test_fraction)
    )
    n_samples = write_table(samples, lake.spark("samples"), SAMPLES)
    tagged.unpersist()
    written = read_table(spark, lake.spark("samples"), SAMPLES)
    n_item_pv = write_table(
        item_pv(written, items, cfg.stats.pv_buckets), lake.spark("item_pv"), ITEM_PV
    )
    splits = {r["split"]: int(r["count"]) for r in written.groupBy("split").count().collect()}
    return {
        "rows": {"samples": n_samples, "item_pv": n_item_pv},
        "input_rows": {"events": n_samples + sum(bad.values())},
        "bad_rows": bad,
        "splits": dict(sorted(splits.items())),
    }


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.runner import job_main

    return job_main("samples", argv)


if __name__ == "__main__":
    sys.exit(main())
