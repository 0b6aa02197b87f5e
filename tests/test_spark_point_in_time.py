"""Point-in-time proof on random events, against a plain-Python reference.

For every sample at time t, the item statistics Feast would join (the latest item_stats row
stamped <= t) and the sample's sequence and user statistics must equal what the Python reference computes from the
events strictly before t (item_stats: strictly before t's UTC midnight). Timestamps are drawn
from a few values per day, exactly midnight included, so same-second events, midnight events
and recent-window expiry all occur.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.item_stats import period_counts, snapshot_counts
from spark_jobs.sequences import sequences

DAY_US = 86_400 * 1_000_000
T0 = datetime(2021, 3, 1, tzinfo=UTC)
WINDOW_DAYS = 2
MAX_LEN = 4


def random_samples(seed: int = 7, n: int = 160) -> list[tuple[int, int, int, int]]:
    """(user_id, item_id, label, unix microseconds)."""
    rng = random.Random(seed)
    offsets = [0, 1, 3_600, 43_200, 86_399]  # seconds into the day: midnight, 1 s, ...
    rows = set()
    while len(rows) < n:
        t = T0 + timedelta(days=rng.randrange(8), seconds=rng.choice(offsets))
        us = round(t.timestamp() * 1_000_000)
        rows.add((rng.randrange(1, 5), rng.randrange(1, 6), rng.randrange(2), us))
    return sorted(rows)


def frame(spark: SparkSession, rows: list[tuple[int, int, int, int]]) -> DataFrame:
    return spark.createDataFrame(rows, "user_id BIGINT, item_id BIGINT, label BIGINT, us BIGINT").select(
        "user_id", "item_id", "label", F.timestamp_micros("us").alias("event_timestamp")
    )


def test_item_stats_joined_at_sample_time_match_reference(spark: SparkSession) -> None:
    rows = random_samples()
    stats = (
        frame(spark, rows).transform(period_counts).transform(snapshot_counts, WINDOW_DAYS)
        .select("item_id", (F.col("period") * DAY_US).alias("us"), "pv", "clicks", "pv_recent",
                "clicks_recent")
        .collect()
    )
    assert stats, "no snapshots"
    for _, item, _, t in rows:
        visible = [r for r in stats if r["item_id"] == item and r["us"] <= t]
        got = max(visible, key=lambda r: r["us"]) if visible else None
        got_values = (got["pv"], got["clicks"], got["pv_recent"], got["clicks_recent"]) if got else (0, 0, 0, 0)
        midnight = t - t % DAY_US
        before = [r for r in rows if r[1] == item and r[3] < midnight]
        recent = [r for r in before if r[3] >= midnight - WINDOW_DAYS * DAY_US]
        expected = (len(before), sum(r[2] for r in before), len(recent), sum(r[2] for r in recent))
        assert got_values == expected, (item, t, got_values, expected)
        assert got_values[0] <= sum(1 for r in rows if r[1] == item and r[3] < t)


def test_sequences_match_reference(spark: SparkSession) -> None:
    rows = random_samples()
    got = {
        (r["user_id"], r["us"]): (list(r["seq_item_ids"]), r["seq_len"], r["user_pv"],
                                   r["user_clicks"], round(r["user_ctr"], 5))
        for r in sequences(frame(spark, rows), MAX_LEN, 0.4, 3.0)
        .select("user_id", F.unix_micros("event_timestamp").alias("us"), "seq_item_ids", "seq_len",
                "user_pv", "user_clicks", "user_ctr")
        .collect()
    }
    expected = {}
    for user in {r[0] for r in rows}:
        own = [r for r in rows if r[0] == user]
        times = sorted({r[3] for r in own}) + [max(r[3] for r in own) + 1_000_000]
        for t in times:
            clicks = sorted((r[3], r[1]) for r in own if r[2] == 1 and r[3] < t)
            last = [item for _, item in clicks][-MAX_LEN:]
            pv = sum(1 for r in own if r[3] < t)
            rate = round((len(clicks) + 3.0 * 0.4) / (pv + 3.0), 5)
            expected[(user, t)] = ([0] * (MAX_LEN - len(last)) + last, len(last), pv, len(clicks),
                                   rate)
    assert got == expected
