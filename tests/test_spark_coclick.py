"""coclick job: close pairs per user, user support, PMI ranking, coverage."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from spark_jobs.coclick import (
    close_pairs,
    coverage,
    item_users,
    pair_counts,
    pmi_scores,
    top_partners,
    train_clicks,
)

SAMPLES_DDL = "user_id BIGINT, item_id BIGINT, label BIGINT, event_timestamp TIMESTAMP, split STRING"
PAIRS_DDL = "user_id BIGINT, item_a BIGINT, item_b BIGINT"
COCLICK_DDL = "item_id BIGINT, partner_id BIGINT, count BIGINT, score DOUBLE, rank INT"
T0 = datetime(2020, 1, 1, tzinfo=UTC)


def click(user: int, item: int, seconds: int, label: int = 1, split: str = "train") -> tuple:
    return (user, item, label, T0 + timedelta(seconds=seconds), split)


# max_time_gap_s = 100, max_position_gap = 2
SAMPLES = [
    # user 1: 1@0 2@10 3@20 | 4@500 5@510 -> {1,2} {1,3} {2,3} {4,5}; 3-4 are 480 s apart
    click(1, 1, 0), click(1, 2, 10), click(1, 3, 20), click(1, 4, 500), click(1, 5, 510),
    click(1, 6, 15, split="valid"),  # not train: ignored
    # user 2: 2@0 1@5 2@6 6@7 -> {1,2} (twice, counted once) {1,6} {2,6}; 2@0-6@7 are 3 apart
    click(2, 2, 0), click(2, 1, 5), click(2, 2, 6), click(2, 6, 7),
    # user 3: 1 and 3 at the same second (ordered by item id), 7@50 -> {1,3} {1,7} {3,7}
    click(3, 3, 0), click(3, 1, 0), click(3, 7, 50),
    click(3, 2, 1, label=0),  # a view, not a click: ignored
    click(4, 8, 0),  # users 4 and 5 click alone: they count in N and in users(item)
    click(5, 2, 0),
]


def samples_frame(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(SAMPLES, SAMPLES_DDL)


def test_close_pairs_respect_position_and_time_gaps(spark: SparkSession) -> None:
    got = samples_frame(spark).transform(train_clicks).transform(close_pairs, 100, 2)
    expected = [(1, 1, 2), (1, 1, 3), (1, 2, 3), (1, 4, 5), (2, 1, 2), (2, 1, 6), (2, 2, 6),
                (3, 1, 3), (3, 1, 7), (3, 3, 7)]
    assertDataFrameEqual(got, spark.createDataFrame(expected, PAIRS_DDL))


def test_pair_counts_users_once_and_min_support(spark: SparkSession) -> None:
    pairs = samples_frame(spark).transform(train_clicks).transform(close_pairs, 100, 2)
    got = pairs.transform(pair_counts, 2)
    expected = spark.createDataFrame([(1, 2, 2), (1, 3, 2)], "item_a BIGINT, item_b BIGINT, count BIGINT")
    assertDataFrameEqual(got, expected)


def _coclick(spark: SparkSession, top_k: int) -> DataFrame:
    clicks = samples_frame(spark).transform(train_clicks)
    pairs = clicks.transform(close_pairs, 100, 2).transform(pair_counts, 2)
    return pairs.transform(pmi_scores, item_users(clicks), 5).transform(top_partners, top_k)


def test_pmi_ranked_symmetric_partners(spark: SparkSession) -> None:
    # N = 5 users with train clicks; users(1) = 3 (users 1,2,3), users(2) = 3 (1,2,5),
    # users(3) = 2 (1,3); count(1,2) = count(1,3) = 2.
    pmi_12 = math.log(2 * 5 / (3 * 3))
    pmi_13 = math.log(2 * 5 / (3 * 2))
    expected = [(1, 3, 2, pmi_13, 1), (1, 2, 2, pmi_12, 2), (2, 1, 2, pmi_12, 1), (3, 1, 2, pmi_13, 1)]
    assertDataFrameEqual(_coclick(spark, 5), spark.createDataFrame(expected, COCLICK_DDL))


def test_top_k_keeps_best_partners_per_item(spark: SparkSession) -> None:
    pmi_12 = math.log(2 * 5 / (3 * 3))
    pmi_13 = math.log(2 * 5 / (3 * 2))
    expected = [(1, 3, 2, pmi_13, 1), (2, 1, 2, pmi_12, 1), (3, 1, 2, pmi_13, 1)]
    assertDataFrameEqual(_coclick(spark, 1), spark.createDataFrame(expected, COCLICK_DDL))


def test_ties_rank_by_count_then_partner_id(spark: SparkSession) -> None:
    scored = spark.createDataFrame(
        [(1, 9, 2, 0.5), (1, 4, 3, 0.5), (1, 3, 2, 0.5), (1, 8, 1, 0.9)],
        "item_id BIGINT, partner_id BIGINT, count BIGINT, score DOUBLE",
    )
    got = scored.transform(top_partners, 3).select("partner_id", "rank")
    expected = spark.createDataFrame([(8, 1), (4, 2), (3, 3)], "partner_id BIGINT, rank INT")
    assertDataFrameEqual(got, expected)


def test_coverage_counts_cold_items(spark: SparkSession) -> None:
    coclick = spark.createDataFrame([(1, 3), (2, 1), (3, 1)], "item_id BIGINT, partner_id BIGINT")
    item_pv = spark.createDataFrame(
        [(1, 30, 2), (2, 4, 1), (3, 2, 1), (4, 0, 0), (5, 1, 1)],
        "item_id BIGINT, train_pv BIGINT, pv_bucket BIGINT",
    )
    assert coverage(coclick, item_pv, cold_max_bucket=1) == {
        "items_total": 5, "items_covered": 3, "cold_items": 4, "cold_items_covered": 2,
    }
