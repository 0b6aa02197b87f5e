"""item_stats job: daily point-in-time snapshots, midnight events, recent-window expiry."""

from __future__ import annotations

from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs.item_stats import period_counts, snapshot_counts, with_rates

SAMPLES_DDL = "item_id BIGINT, label BIGINT, event_timestamp TIMESTAMP"
STATS_DDL = (
    "item_id BIGINT, event_timestamp TIMESTAMP, pv BIGINT, clicks BIGINT, ctr FLOAT, "
    "pv_recent BIGINT, clicks_recent BIGINT, ctr_recent FLOAT, pv_bucket BIGINT"
)


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2020, 1, day, hour, minute, second, tzinfo=UTC)


SAMPLES = [
    (7, 1, ts(1)),  # exactly midnight: belongs to Jan 1, not in the row stamped Jan 1 00:00
    (7, 0, ts(1, 23, 59, 59)),
    (7, 1, ts(2, 12)),
    (7, 0, ts(6)),  # exactly midnight of Jan 6
    (8, 1, ts(3, 10)),
]


def stats(spark: SparkSession, window_days: int = 2) -> DataFrame:
    # prior 0.5, strength 2: ctr = (clicks + 1) / (pv + 2); buckets 0 | 1-2 | >= 3
    return (
        spark.createDataFrame(SAMPLES, SAMPLES_DDL)
        .transform(period_counts)
        .transform(snapshot_counts, window_days)
        .transform(with_rates, 0.5, 2.0, (0, 1, 3))
    )


def test_snapshots_by_hand(spark: SparkSession) -> None:
    # Event days of item 7: Jan 1 (pv 2, clicks 1), Jan 2 (1, 1), Jan 6 (1, 0). Rows on the day
    # after each (Jan 2, 3, 7) and when each leaves the 2-day window (Jan 4, 5, 9).
    expected = [
        (7, ts(2), 2, 1, 2 / 4, 2, 1, 2 / 4, 1),
        (7, ts(3), 3, 2, 3 / 5, 3, 2, 3 / 5, 2),
        (7, ts(4), 3, 2, 3 / 5, 1, 1, 2 / 3, 2),  # Jan 1 left the window (Jan 2-3)
        (7, ts(5), 3, 2, 3 / 5, 0, 0, 1 / 2, 2),  # Jan 2 left: the recent window is empty
        (7, ts(7), 4, 2, 3 / 6, 1, 0, 1 / 3, 2),
        (7, ts(9), 4, 2, 3 / 6, 0, 0, 1 / 2, 2),
        (8, ts(4), 1, 1, 2 / 3, 1, 1, 2 / 3, 1),
        (8, ts(6), 1, 1, 2 / 3, 0, 0, 1 / 2, 1),
    ]
    assertDataFrameEqual(stats(spark), spark.createDataFrame(expected, STATS_DDL))


def test_overlapping_marks_give_one_row(spark: SparkSession) -> None:
    # With a 4-day window, Jan 2 + 4 + 1 = Jan 7 coincides with the day after Jan 6.
    got = stats(spark, window_days=4).filter("item_id = 7").select("event_timestamp", "pv_recent")
    expected = [(ts(2), 2), (ts(3), 3), (ts(6), 1), (ts(7), 1), (ts(11), 0)]
    # Jan 6: Jan 1 expired (window Jan 2-5); Jan 7: Jan 2 expired, Jan 6 entered
    assertDataFrameEqual(got, spark.createDataFrame(expected, "event_timestamp TIMESTAMP, pv_recent BIGINT"))


def micros(t: datetime) -> int:
    return round(t.timestamp() * 1_000_000)


def test_latest_row_at_sample_time_never_counts_the_sample(spark: SparkSession) -> None:
    """Feast's join (latest row <= t) for each sample, done here by hand on unix microseconds."""
    rows = [(r["item_id"], r["us"], r["pv"])
            for r in stats(spark).select("item_id", F.unix_micros("event_timestamp").alias("us"),
                                         "pv").collect()]

    def pv_seen(item: int, t: datetime) -> int:
        visible = [(us, pv) for i, us, pv in rows if i == item and us <= micros(t)]
        return max(visible)[1] if visible else 0

    for item, _, t in SAMPLES:
        earlier = sum(1 for i, _, u in SAMPLES if i == item and u < t)
        assert pv_seen(item, t) <= earlier, (item, t)
    assert pv_seen(7, ts(1)) == 0  # the midnight event of Jan 1: no row yet
    assert pv_seen(7, ts(6)) == 3  # the midnight event of Jan 6 sees the Jan 5 row: not 4
    assert pv_seen(7, ts(6, 0, 0, 1)) == 3  # nor a second later (daily snapshots)
    assert pv_seen(7, ts(7)) == 4
