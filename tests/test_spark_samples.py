"""samples job: labels, the per-user temporal split, item PV buckets, bad rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from spark_jobs.samples import bad_row_counts, item_pv, tag_bad_events, with_label, with_split

EVENTS_DDL = "user_id BIGINT, item_id BIGINT, rating FLOAT, event_timestamp TIMESTAMP"
T0 = datetime(2020, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def frame(spark: SparkSession, rows: list[tuple], ddl: str = EVENTS_DDL) -> DataFrame:
    return spark.createDataFrame(rows, ddl)


def test_label_is_rating_at_or_above_threshold(spark: SparkSession) -> None:
    events = frame(spark, [(1, 1, 3.5, at(0)), (1, 2, 4.0, at(1)), (1, 3, 5.0, at(2))])
    got = events.transform(with_label, 4.0).select("item_id", "label")
    assertDataFrameEqual(got, frame(spark, [(1, 0), (2, 1), (3, 1)], "item_id BIGINT, label BIGINT"))


def test_split_last_fractions_per_user_rounded_down_ties_by_item(spark: SparkSession) -> None:
    rows = [(1, i, 4.0, at(i)) for i in range(1, 11)]  # 10 events: 2 test, 1 valid, 7 train
    rows += [(2, i, 4.0, at(i)) for i in (1, 2, 3)]  # 3 events: floor(0.6) = 0 test -> all train
    # 5 events, the last two at the same second: ordered by item id, so item 9 is last (test)
    rows += [(3, 5, 1.0, at(1)), (3, 4, 1.0, at(2)), (3, 3, 1.0, at(3)), (3, 9, 1.0, at(4)),
             (3, 2, 1.0, at(4))]
    got = frame(spark, rows).transform(with_split, 0.1, 0.2).select("user_id", "item_id", "split")
    expected = (
        [(1, i, "train") for i in range(1, 8)] + [(1, 8, "valid"), (1, 9, "test"), (1, 10, "test")]
        + [(2, i, "train") for i in (1, 2, 3)]
        + [(3, 5, "train"), (3, 4, "train"), (3, 3, "train"), (3, 2, "train"), (3, 9, "test")]
    )
    assertDataFrameEqual(got, frame(spark, expected, "user_id BIGINT, item_id BIGINT, split STRING"))


def test_split_fraction_products_are_not_lost_to_float_error(spark: SparkSession) -> None:
    # 0.7 * 10 = 7.000000000000001 and 0.3 * 10 = 3.0000000000000004: 3 test, 0 valid, 7 train
    rows = [(1, i, 4.0, at(i)) for i in range(1, 11)]
    got = frame(spark, rows).transform(with_split, 0.0, 0.3).groupBy("split").count()
    assertDataFrameEqual(got, frame(spark, [("train", 7), ("test", 3)], "split STRING, count BIGINT"))


def test_item_pv_counts_train_only_and_includes_every_item(spark: SparkSession) -> None:
    samples = frame(
        spark,
        [(1, 1, "train"), (2, 1, "train"), (3, 1, "train"), (1, 2, "train"), (2, 2, "test"),
         (1, 3, "valid")],
        "user_id BIGINT, item_id BIGINT, split STRING",
    )
    items = frame(spark, [(1,), (2,), (3,), (4,)], "item_id BIGINT")
    got = item_pv(samples, items, (0, 1, 3))
    expected = frame(spark, [(1, 3, 2), (2, 1, 1), (3, 0, 0), (4, 0, 0)],
                     "item_id BIGINT, train_pv BIGINT, pv_bucket BIGINT")
    assertDataFrameEqual(got, expected)


def test_bad_rows_are_tagged_by_reason(spark: SparkSession) -> None:
    events = frame(spark, [
        (1, 1, 4.0, at(0)),  # good
        (None, 1, 4.0, at(1)),
        (1, None, 4.0, at(2)),
        (1, 1, None, at(3)),
        (1, 1, 4.0, None),
        (1, 0, 4.0, at(4)),
        (1, 99, 4.0, at(5)),
    ])
    items = frame(spark, [(0,), (1,)], "item_id BIGINT")  # even a listed 0 is not a real id
    counts = bad_row_counts(events.transform(tag_bad_events, items))
    assert counts == {
        "item_id < 1": 1, "item_id not in items": 1, "null event_timestamp": 1,
        "null item_id": 1, "null rating": 1, "null user_id": 1,
    }


@pytest.mark.parametrize("threshold", [4.0, 4.5])
def test_label_threshold_from_argument(spark: SparkSession, threshold: float) -> None:
    events = frame(spark, [(1, 1, 4.0, at(0))])
    (row,) = events.transform(with_label, threshold).collect()
    assert row["label"] == (1 if threshold == 4.0 else 0)
