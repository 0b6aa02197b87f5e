"""The streaming job's user rows against the batch job (``spark_jobs/sequences.py``): real Spark,
a real Feast store (sqlite; the first test on Redis too, through a real redis-server), no mocks.

After each run of the stream, every user's online ``user_sequence`` row (read back from Feast,
with its timestamp) must equal, value by value, the batch job's *serving row* over the events
fed so far: the row that ``spark_jobs.sequences.sequences`` stamps 1 s after the user's last
event (its latest row), picked here in pandas from the batch job's whole output. The sequence
length is 3 (``small_config``), so a user with more clicks keeps only the last 3.

Timestamps: real events carry microseconds, and so does a serving row (last event + 1 s). Redis
keeps them; Feast's sqlite store writes whole epoch seconds (``adapt_datetime_epoch`` in
``feast/infra/online_stores/sqlite.py``), so there the batch job's row is compared with its
timestamp floored to the second (:func:`as_kept`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from stream_helpers import (
    at,
    batch_serving_rows,
    normalise_user_rows,
    stream_config,
    write_events,
)
from test_feast_lake import write_lake

from feature_repo import store as fs
from feature_repo.profiles import store_settings
from feature_repo.stream_sink import (
    item_stats_sink,
    read_online_user_rows,
    sink_store,
    user_rows_sink,
)
from saviorrec.config import Config
from saviorrec.lake import Lake
from spark_jobs import item_stats_stream

USERS = list(range(1, 8))  # user 7 never has an event
SUB_SECOND = timedelta(microseconds=250_001)


# (user, item, rating, time); rating >= 4 is a click
FILE_A = [
    # user 1: five clicks (more than the 3 kept), two of them at one instant (items 9 then 4:
    # ordered by item id), a non-click between
    (1, 1, 5.0, at(1, 8)),
    (1, 2, 4.0, at(1, 9)),
    (1, 3, 2.0, at(1, 10)),  # not a click: counted in user_pv only
    (1, 9, 4.5, at(1, 11)),
    (1, 4, 4.0, at(1, 11)),  # same instant as item 9: item 4 first in the sequence
    (1, 5, 5.0, at(2)),
    # user 2: non-clicks only: pv 2, no click, an empty (all padding) sequence; the last event
    # has microseconds, as real events do: the row is stamped 1 s after it to the microsecond
    (2, 1, 1.0, at(1, 12)),
    (2, 2, 3.5, at(1, 13) + SUB_SECOND),
    # user 4: a click and a non-click at one instant
    (4, 6, 4.0, at(3, 6)),
    (4, 7, 1.0, at(3, 6)),
]
FILE_B = [
    (3, 8, 5.0, at(2, 5)),  # user 3's first event ever, in the second file
    (1, 6, 4.0, at(3)),  # user 1 again: the sequence slides (2, 4, 9 -> 4, 9 ... )
    (4, 2, 4.0, at(4)),  # user 4, across two files
]
FILE_C = [  # arrives after B, older: late events
    (1, 7, 4.0, at(0, 23)),  # a late click older than user 1's last 3: pv and clicks only
    (4, 5, 5.0, at(3, 7)),  # a late click inside user 4's sequence
    (5, 3, 2.0, at(5)),  # user 5: one non-click
]


def is_sqlite(cfg: Config) -> bool:
    return store_settings(cfg)["online_store"]["type"] == "sqlite"


def as_kept(cfg: Config, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` as the run's online store keeps them: sqlite floors timestamps to the second."""
    if not is_sqlite(cfg):
        return rows
    return rows.assign(event_timestamp=rows["event_timestamp"].dt.floor("s"))


def online(cfg: Config) -> pd.DataFrame:
    return normalise_user_rows(read_online_user_rows(fs.get_store(cfg), USERS))


def run_stream(spark: SparkSession, cfg: Config) -> dict:
    return item_stats_stream.run(spark, cfg, item_stats_sink(cfg), available_now=True,
                                 user_sink=user_rows_sink(cfg))


@pytest.fixture()
def local(request: pytest.FixtureRequest, config: Config) -> Config:
    """The local profile (sqlite); with the parameter "redis", the production profile on a
    redis-server of the test's own."""
    cfg = stream_config(config)
    if getattr(request, "param", "sqlite") == "redis":
        cfg = cfg.with_overrides(feast={"profile": "production", "redis_timeout_s": 2.0})
        request.getfixturevalue("monkeypatch").setenv(
            cfg.feast.redis_env, request.getfixturevalue("redis_server").url)
    # an empty sequences source: the online store starts without user rows
    write_lake(cfg, sequences=[(6, 1, [0, 0, 0], 0)])
    fs.apply(cfg)
    return cfg


@pytest.mark.parametrize("local", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
def test_user_rows_equal_the_batch_jobs_serving_rows(spark: SparkSession, local: Config) -> None:
    assert local.sequences.max_len == 3
    lake = Lake.from_config(local)
    inbox, files = lake.event_inbox, lake.item_stats_stream
    write_events(inbox / "a.parquet", FILE_A)
    write_events(inbox / "b.parquet", FILE_B)
    result = run_stream(spark, local)
    assert result["last_batch"]["batch_id"] == 1  # one file per micro-batch
    assert result["last_batch"]["user_rows_pushed"] == 3  # batch 1's users: 1, 3, 4
    got = online(local)
    batch = batch_serving_rows(spark, local, FILE_A + FILE_B)
    pd.testing.assert_frame_equal(got, as_kept(local, batch))
    # by hand
    one = got.set_index("user_id")
    assert one.loc[1, "seq_item_ids"] == [9, 5, 6]  # 1, 2, 4 slid out; 4 before 9 at 11:00
    assert one.loc[1, ["seq_len", "user_pv", "user_clicks"]].tolist() == [3, 7, 6]
    assert one.loc[1, "event_timestamp"] == pd.Timestamp(at(3, 0, 0, 1))
    assert one.loc[2, "seq_item_ids"] == [0, 0, 0] and one.loc[2, "user_pv"] == 2
    stamp = pd.Timestamp(at(1, 13, 0, 1) + SUB_SECOND)  # the batch row's, to the microsecond
    assert batch.set_index("user_id").loc[2, "event_timestamp"] == stamp
    assert one.loc[2, "event_timestamp"] == (stamp.floor("s") if is_sqlite(local) else stamp)
    assert one.loc[2, "user_ctr"] == np.float32((0 + 10 * 0.5) / (2 + 10))
    assert one.loc[3, ["seq_item_ids", "user_pv"]].tolist() == [[0, 0, 8], 1]
    assert one.loc[4, "seq_item_ids"] == [0, 6, 2]  # the click at 06:00, not the non-click
    assert sorted(one.index) == [1, 2, 3, 4]

    # late events in a third file, on the same checkpoint
    write_events(inbox / "c.parquet", FILE_C)
    run_stream(spark, local)
    everything = FILE_A + FILE_B + FILE_C
    got = online(local)
    pd.testing.assert_frame_equal(got, as_kept(local, batch_serving_rows(spark, local, everything)))
    one = got.set_index("user_id")
    assert one.loc[1, "seq_item_ids"] == [9, 5, 6]  # the late click is older than the last 3
    assert one.loc[1, ["user_pv", "user_clicks"]].tolist() == [8, 7]  # ... but counted
    assert one.loc[1, "event_timestamp"] == pd.Timestamp(at(3, 0, 0, 1))  # not moved back
    assert one.loc[4, "seq_item_ids"] == [6, 5, 2]  # inserted in time order
    assert sorted(one.index) == [1, 2, 3, 4, 5]

    # The state is bounded: one row per user and batch, at most max_len clicks each.
    job = item_stats_stream.ItemStatsStream(spark, local, lambda rows: None)
    state = job.user_state(99).toPandas()
    assert state["recent"].map(len).max() <= local.sequences.max_len
    latest = state.sort_values("batch_id").groupby("user_id").tail(1)
    assert latest["pv"].sum() == len(everything)  # every event counted once

    # A rerun of the last batch (its commit removed, as after a kill -9 before the commit): the
    # state is kept, the same full rows are pushed again over rows that were spoiled meanwhile.
    spoiled = got[got["user_id"].isin([1, 4, 5])].copy()
    spoiled["seq_item_ids"] = [[0, 0, 0]] * len(spoiled)
    spoiled["user_pv"] = 1000
    sink_store(local).write_to_online_store("user_sequence", spoiled)
    assert online(local).set_index("user_id").loc[1, "user_pv"] == 1000
    folders = sorted(p.name for p in files.users.iterdir())
    for name in ("2", ".2.crc"):  # the commit and its checksum, as if never written
        (files.checkpoint / "commits" / name).unlink()
    result = run_stream(spark, local)
    assert result["last_batch"]["batch_id"] == 2  # batch 2 again, no new batch
    assert sorted(p.name for p in files.users.iterdir()) == folders
    pd.testing.assert_frame_equal(online(local),
                                  as_kept(local, batch_serving_rows(spark, local, everything)))
    state = job.user_state(99).toPandas()
    assert state.sort_values("batch_id").groupby("user_id").tail(1)["pv"].sum() == len(everything)


def test_user_rows_follow_bad_files_out(spark: SparkSession, local: Config,
                                        tmp_path: Path) -> None:
    """A quarantined file counts for neither kind of row."""
    local = local.with_overrides(stream={"max_files_per_trigger": 10})  # all in one batch
    inbox = Lake.from_config(local).event_inbox
    write_events(inbox / "good.parquet", FILE_A)
    write_events(inbox / "bad_rating.parquet", [(3, 3, 9.0, at(1)), (1, 8, 5.0, at(4))])
    result = run_stream(spark, local)
    assert result["quarantined"]["files"] == 1
    pd.testing.assert_frame_equal(online(local), as_kept(local, batch_serving_rows(spark, local,
                                                                                   FILE_A)))
