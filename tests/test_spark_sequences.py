"""sequences job: last N clicks and the user's statistics strictly before each sample time,
padding, serving row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from spark_jobs.sequences import sequences

SAMPLES_DDL = "user_id BIGINT, item_id BIGINT, label BIGINT, event_timestamp TIMESTAMP"
SEQ_DDL = ("user_id BIGINT, event_timestamp TIMESTAMP, seq_item_ids ARRAY<BIGINT>, seq_len BIGINT, "
           "user_pv BIGINT, user_clicks BIGINT, user_ctr FLOAT")
PRIOR, STRENGTH = 0.5, 2.0


def ctr(clicks: int, pv: int) -> float:
    return (clicks + STRENGTH * PRIOR) / (pv + STRENGTH)
T1 = datetime(2020, 1, 1, 10, tzinfo=UTC)
T2 = T1 + timedelta(seconds=5)
T3 = T2 + timedelta(microseconds=1)
T4 = T1 + timedelta(minutes=1)
T5 = T1 + timedelta(minutes=2)


def test_sequences_by_hand(spark: SparkSession) -> None:
    samples = spark.createDataFrame(
        [
            (1, 1, 1, T1), (1, 2, 1, T1),  # two clicks in the same second
            (1, 3, 0, T2),  # a view, never in a sequence
            (1, 4, 1, T3),  # one microsecond after T2
            (1, 5, 1, T4),
            (1, 6, 1, T5),
            (2, 9, 0, T1),  # a user without clicks
        ],
        SAMPLES_DDL,
    )
    expected = [
        (1, T1, [0, 0, 0], 0, 0, 0),  # same-second clicks are not before T1
        (1, T2, [0, 1, 2], 2, 2, 2),
        (1, T3, [0, 1, 2], 2, 3, 2),  # the view at T2 is not a click, but it is an event
        (1, T4, [1, 2, 4], 3, 4, 3),
        (1, T5, [2, 4, 5], 3, 5, 4),  # max_len 3: the oldest click drops out
        (1, T5 + timedelta(seconds=1), [4, 5, 6], 3, 6, 5),  # serving row: everything so far
        (2, T1, [0, 0, 0], 0, 0, 0),
        (2, T1 + timedelta(seconds=1), [0, 0, 0], 0, 1, 0),
    ]
    rows = [(*r, ctr(r[5], r[4])) for r in expected]
    assertDataFrameEqual(sequences(samples, 3, PRIOR, STRENGTH),
                         spark.createDataFrame(rows, SEQ_DDL), rtol=1e-6)
