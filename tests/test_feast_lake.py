"""Hand-built input tables for the Feast tests, in the exact schemas of saviorrec.schema.

Days are counted from 2020-01-01 UTC. Items 1 and 2 have statistics rows; item 3 has a
multimodal row but no statistics (cold); item 4 is unknown everywhere. This module also tests
the profile helpers (no store needed).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_repo.fields import FEAST_TYPES, feature_fields
from feature_repo.profiles import RedisConfigError, redis_address, redis_connection_string
from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.schema import (
    ITEM_MULTIMODAL,
    ITEM_PV,
    ITEM_STATS,
    SAMPLES,
    SEQUENCES,
    Table,
)

T0 = datetime(2020, 1, 1, tzinfo=UTC)
DIM, SID_LEN, SEQ_LEN = 4, 3, 3


def day(d: float) -> datetime:
    return T0 + timedelta(days=d)


def stats_row(item: int, d: float, pv: int, clicks: int, ctr: float, bucket: int) -> dict[str, Any]:
    return {"item_id": item, "event_timestamp": day(d), "pv": pv, "clicks": clicks, "ctr": ctr,
            "pv_recent": pv - 1, "clicks_recent": clicks, "ctr_recent": ctr / 2,
            "pv_bucket": bucket}


ITEM_STATS_ROWS = [
    stats_row(1, 1, 1, 1, 0.625, 1),
    stats_row(1, 3, 5, 2, 0.4, 1),
    stats_row(2, 2, 2, 0, 0.25, 1),
    stats_row(2, 10, 30, 9, 0.3, 3),
]
MULTIMODAL_ROWS = [
    {"item_id": i, "embedding": [float(i), 0.5, -1.0, 0.25], "semantic_ids": [i, i + 1, 0],
     "encoder_version": "enc-1", "rqvae_version": "rq-1", "event_timestamp": day(0)}
    for i in (1, 2, 3)
]
SEQUENCE_ROWS = [  # one row per (user, sample time) + one after the user's last event
    (10, 2, [0, 0, 0], 0), (10, 3, [0, 0, 1], 1), (10, 4, [0, 1, 2], 2),
    (11, 5, [0, 1, 2], 2), (11, 9.9, [1, 2, 4], 3), (11, 11, [2, 4, 3], 3),
    (12, 0.5, [0, 0, 1], 1), (12, 1, [0, 1, 4], 2),
]
SAMPLE_ROWS = [  # user, item, label, day, split
    (10, 1, 1, 2, "train"),
    (10, 2, 0, 3, "train"),
    (10, 1, 1, 3, "valid"),  # same user and time as the previous one: shares its sequence
    (11, 3, 1, 5, "test"),
    (11, 2, 0, 9.9, "test"),  # item 2 has a row at day 10: after the sample, never used
    (12, 4, 1, 0.5, "train"),
]
ITEM_PV_ROWS = [(1, 3, 1), (2, 25, 3), (3, 0, 0)]


def small_config(config: Config) -> Config:
    return config.with_overrides(encoder={"dim": DIM}, rqvae={"levels": SID_LEN - 1},
                                 sequences={"max_len": SEQ_LEN}, feast={"training_chunk_rows": 1000})


def _rows(rows: list[dict[str, Any]], table: Table) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=table.arrow_schema())


def user_stats(seq_len: int) -> dict[str, Any]:
    """The user statistics of a SEQUENCE_ROWS row: a function of its seq_len (pv = 2 * clicks)."""
    return {"user_pv": 2 * seq_len, "user_clicks": seq_len,
            "user_ctr": (seq_len + 1) / (2 * seq_len + 2)}


def write_folder(table: pa.Table, folder: Path) -> None:
    """Like a Spark job: part files plus _SUCCESS in a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-00000.parquet", coerce_timestamps="us")
    (folder / "_SUCCESS").touch()


def write_lake(cfg: Config, *, stats: list[dict[str, Any]] | None = None,
               sequences: list[tuple] | None = None, samples: list[tuple] | None = None,
               multimodal: list[dict[str, Any]] | None = None,
               item_pv: list[tuple] | None = None) -> Lake:
    lake = Lake.from_config(cfg)
    write_folder(_rows(stats or ITEM_STATS_ROWS, ITEM_STATS), lake.spark("item_stats"))
    write_folder(_rows([
        {"user_id": u, "event_timestamp": day(d), "seq_item_ids": ids, "seq_len": n,
         **user_stats(n)}
        for u, d, ids, n in (sequences or SEQUENCE_ROWS)], SEQUENCES), lake.spark("sequences"))
    write_folder(_rows([
        {"user_id": u, "item_id": i, "label": y, "rating": 4.0 if y else 2.0,
         "event_timestamp": day(d), "split": s} for u, i, y, d, s in (samples or SAMPLE_ROWS)],
        SAMPLES), lake.spark("samples"))
    write_folder(_rows([{"item_id": i, "train_pv": pv, "pv_bucket": b}
                        for i, pv, b in (item_pv or ITEM_PV_ROWS)], ITEM_PV), lake.spark("item_pv"))
    lake.item_multimodal.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_rows(multimodal or MULTIMODAL_ROWS, ITEM_MULTIMODAL), lake.item_multimodal,
                   coerce_timestamps="us")
    return lake


# --- profile helpers ---------------------------------------------------------------------------
def test_redis_url_converts_to_feast_connection_string() -> None:
    assert redis_connection_string("redis://127.0.0.1:6390/2") == "127.0.0.1:6390,db=2"
    assert redis_connection_string("rediss://:p%40ss@cache:7000/0", timeout_s=1.5) == (
        "cache:7000,db=0,socket_connect_timeout=1.5,socket_timeout=1.5,ssl=true,password=p@ss")
    assert redis_connection_string("redis://bob:pw@h") == "h:6379,db=0,username=bob,password=pw"


def test_redis_address_and_errors_never_show_the_password() -> None:
    assert redis_address("redis://:hunter2@10.0.0.5:6380/1") == "10.0.0.5:6380"
    for bad in ("http://:hunter2@h:1/0", "redis://:hunter2@h:1/x", "redis://:hunter2@h:99999/0",
                "redis://:hun,ter2@h:1/0"):
        with pytest.raises(RedisConfigError) as err:
            redis_connection_string(bad)
        assert "hunter2" not in str(err.value) and "hun,ter2" not in str(err.value)


def test_feast_fields_follow_the_schema() -> None:
    fields = {f.name: f.dtype for f in feature_fields(ITEM_MULTIMODAL)}
    assert set(fields) == set(ITEM_MULTIMODAL.names) - {"event_timestamp"}
    assert fields["embedding"] == FEAST_TYPES["list<float32>"]
    assert str(fields["semantic_ids"]) == "Array(Int64)"
    assert str(fields["item_id"]) == "Int64"
