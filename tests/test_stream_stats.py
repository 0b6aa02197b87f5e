"""The streaming item_stats job against the batch job: real Spark, a real Feast store (sqlite, and
Redis through a real redis-server), real processes killed with SIGKILL.

Every check compares each item's online row (read back from Feast, with its timestamp) with the
batch job's row for the same time: its latest row stamped <= the stream's snapshot, picked here
in pandas from the batch job's full output (``spark_jobs.item_stats.item_stats``), not by the
stream's own as-of rule. Days are counted from 2020-01-01 UTC; the recent window is 2 days.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import load_benchmark
from pyspark.sql import SparkSession
from stream_helpers import (
    at,
    batch_serving_rows,
    normalise_rows,
    normalise_user_rows,
    stream_config,
    write_events,
)
from test_feast_lake import write_lake

from feature_repo import store as fs
from feature_repo.stream_sink import (
    item_stats_sink,
    read_online_item_stats,
    read_online_user_rows,
)
from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from saviorrec.schema import EVENTS, ITEM_STATS
from spark_jobs import item_stats_stream
from spark_jobs.item_stats import item_stats
from spark_jobs.samples import with_label

ITEMS = list(range(1, 9))  # item 8 never has an event


# (user, item, rating, time); rating >= 4 is a click
FILE_A = [
    (1, 1, 5.0, at(1)),  # exactly midnight: belongs to day 1
    (2, 1, 2.0, at(1, 12)),
    (1, 2, 4.0, at(2, 6)),  # two events of item 2 at the same instant
    (3, 2, 1.0, at(2, 6)),
    (2, 3, 4.5, at(3)),  # exactly midnight of day 3
]
FILE_B = [
    (1, 1, 4.0, at(5, 10)),  # in the snapshot's own day: not counted yet
    (4, 4, 3.0, at(5)),  # exactly the snapshot instant: not counted
    (4, 3, 4.0, at(4, 23, 59, 59)),  # one second before the snapshot: counted
]
FILE_C = [  # arrives after B, but older: late events
    (5, 2, 5.0, at(1, 23, 59, 59)),
    (5, 5, 4.0, at(2)),  # a new item, late
]
FILE_D = [
    (6, 6, 4.0, at(5, 12)),  # only in the snapshot's day: no row yet
    (6, 7, 3.5, at(3, 8)),
]


def batch_as_of(spark: SparkSession, cfg: Config, rows: list[tuple], when: datetime,
                ) -> pd.DataFrame:
    """The batch job over ``rows``; each item's latest row stamped <= ``when`` (pandas)."""
    events = spark.createDataFrame(rows, EVENTS.spark_ddl())
    out = item_stats(events.transform(with_label, cfg.labels.click_threshold), cfg).toPandas()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    out = out[out["event_timestamp"] <= pd.Timestamp(when)]
    latest = out.sort_values("event_timestamp").groupby("item_id").tail(1)
    return normalise(latest)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    return normalise_rows(frame, ITEM_STATS, "item_id")


def online(cfg: Config, items: list[int] = ITEMS) -> pd.DataFrame:
    return normalise(read_online_item_stats(fs.get_store(cfg), items))


def run_stream(spark: SparkSession, cfg: Config) -> dict:
    return item_stats_stream.run(spark, cfg, item_stats_sink(cfg), available_now=True)


@pytest.fixture()
def local(config: Config) -> Config:
    cfg = stream_config(config)
    write_lake(cfg)
    fs.apply(cfg)
    return cfg


def test_edge_cases_equal_the_batch_job_at_every_step(spark: SparkSession, local: Config) -> None:
    inbox = Lake.from_config(local).event_inbox
    write_events(inbox / "a.parquet", FILE_A)
    write_events(inbox / "b.parquet", FILE_B)
    result = run_stream(spark, local)
    assert result["last_batch"]["batch_id"] == 1  # one file per micro-batch
    assert result["last_batch"]["snapshot"] == at(5).isoformat()
    got = online(local)
    pd.testing.assert_frame_equal(got, batch_as_of(spark, local, FILE_A + FILE_B, at(5)))
    # By hand, as of day 5 (window days 3-4): item 1 has day 1's two events (1 click), its last
    # change on day 4 (day 1 left the window); the day-5 events of items 1 and 4 do not count;
    # item 3: day 3 at midnight and day 4 23:59:59, both in the window.
    one = got.set_index("item_id")
    assert one.loc[1, ["pv", "clicks", "pv_recent"]].tolist() == [2, 1, 0]
    assert one.loc[1, "event_timestamp"] == pd.Timestamp(at(4))
    assert one.loc[3, ["pv", "clicks", "pv_recent", "clicks_recent"]].tolist() == [2, 2, 2, 2]
    assert one.loc[2, ["pv", "clicks"]].tolist() == [2, 1]  # same-instant events both count
    assert 4 not in one.index and 8 not in one.index

    # Restart on the same checkpoint with late files: corrections keep the rows' timestamps.
    write_events(inbox / "c.parquet", FILE_C)
    write_events(inbox / "d.parquet", FILE_D)
    result = run_stream(spark, local)
    assert result["last_batch"]["batch_id"] == 3
    everything = FILE_A + FILE_B + FILE_C + FILE_D
    got = online(local)
    pd.testing.assert_frame_equal(got, batch_as_of(spark, local, everything, at(5)))
    one = got.set_index("item_id")
    assert one.loc[2, ["pv", "clicks"]].tolist() == [3, 2]  # the late day-1 event counted
    assert sorted(one.index) == [1, 2, 3, 5, 7]  # 4, 6: only at or after the snapshot; 8: none
    state = item_stats_stream.ItemStatsStream(spark, local, lambda rows: None).state(99)
    assert state.groupBy().sum("pv").first()[0] == len(everything)  # each event counted once


def test_hourly_cadence_is_honoured_by_both_jobs(spark: SparkSession, config: Config) -> None:
    cfg = stream_config(config, snapshot_cadence="hourly")
    write_lake(cfg)
    fs.apply(cfg)
    rows = [(1, 1, 5.0, at(1, 10)), (2, 1, 1.0, at(1, 10, 30)), (3, 2, 4.0, at(1, 11)),
            (4, 3, 4.0, at(1, 11, 59, 59)), (5, 1, 4.0, at(1, 12, 15))]
    write_events(Lake.from_config(cfg).event_inbox / "h.parquet", rows)
    result = run_stream(spark, cfg)
    assert result["last_batch"]["snapshot"] == at(1, 12).isoformat()
    got = online(cfg)
    pd.testing.assert_frame_equal(got, batch_as_of(spark, cfg, rows, at(1, 12)))
    # by hand: item 1's row stands at 11:00 (its 10:xx events), item 2's (11:00 sharp) at 12:00
    stamps = dict(zip(got["item_id"], got["event_timestamp"], strict=True))
    assert stamps == {1: pd.Timestamp(at(1, 11)), 2: pd.Timestamp(at(1, 12)),
                      3: pd.Timestamp(at(1, 12))}
    assert got.set_index("item_id").loc[1, "pv"] == 2


def test_malformed_files_are_quarantined_and_counted(spark: SparkSession, local: Config) -> None:
    local = local.with_overrides(stream={"max_files_per_trigger": 10})  # all in one batch
    lake = Lake.from_config(local)
    inbox, files = lake.event_inbox, lake.item_stats_stream
    write_events(inbox / "good.parquet", FILE_A)
    inbox.joinpath("garbage.parquet").write_bytes(b"PAR1 this is not parquet at all")
    inbox.joinpath("notes.csv").write_text("user_id,item_id\n1,2\n")
    pq.write_table(pa.table({"user_id": [1], "item_id": ["7"], "rating": pa.array([4.0], pa.float32()),
                             "event_timestamp": pa.array([at(1)], pa.timestamp("us", tz="UTC"))}),
                   inbox / "string_ids.parquet")
    write_events(inbox / "null_item.parquet", [(1, 3, 4.0, at(1)), (1, None, 4.0, at(2))],
                 nullable=True)
    write_events(inbox / "bad_rating.parquet", [(1, 3, 9.0, at(1))])
    result = run_stream(spark, local)

    bad = json.loads(files.bad_files.read_text())
    assert result["quarantined"] == bad
    assert bad["files"] == 5
    assert bad["by_reason"] == {"unreadable": 2, "schema": 1, "rows": 2}
    assert sorted(bad["names"]) == sorted(["garbage.parquet", "notes.csv", "string_ids.parquet",
                                           "null_item.parquet", "bad_rating.parquet"])
    assert sorted(p.name for p in inbox.iterdir()) == ["good.parquet"]
    moved = sorted(p.name.split("-", 1)[1] for p in files.quarantine.iterdir()
                   if not p.name.endswith(".reason.json"))
    assert moved == sorted(bad["names"])
    reasons = {json.loads(p.read_text())["file"].rsplit("/", 1)[1]: json.loads(p.read_text())
               for p in files.quarantine.glob("*.reason.json")}
    assert "null item_id" in reasons["null_item.parquet"]["detail"]
    assert "'item_id' has type string" in reasons["string_ids.parquet"]["detail"]
    # none of the bad files' events count: item 3's only good event is FILE_A's
    pd.testing.assert_frame_equal(online(local), batch_as_of(spark, local, FILE_A, at(3)))


@pytest.mark.redis
def test_redis_takes_late_corrections(spark: SparkSession, config: Config,
                                      monkeypatch: pytest.MonkeyPatch, redis_server) -> None:
    """Feast's Redis store keeps only strictly newer rows; the sink overwrites."""
    cfg = stream_config(config).with_overrides(
        feast={"profile": "production", "redis_timeout_s": 2.0}, spark={"master": "local[2]"})
    monkeypatch.setenv(cfg.feast.redis_env, redis_server.url)
    write_lake(cfg)
    fs.apply(cfg)
    inbox = Lake.from_config(cfg).event_inbox
    write_events(inbox / "a.parquet", FILE_A)
    write_events(inbox / "b.parquet", FILE_B)
    run_stream(spark, cfg)
    before = online(cfg).set_index("item_id")
    write_events(inbox / "c.parquet", FILE_C)
    run_stream(spark, cfg)
    got = online(cfg)
    pd.testing.assert_frame_equal(got, batch_as_of(spark, cfg, FILE_A + FILE_B + FILE_C, at(5)))
    after = got.set_index("item_id")
    assert after.loc[2, "event_timestamp"] == before.loc[2, "event_timestamp"]  # same stamp ...
    assert (before.loc[2, "pv"], after.loc[2, "pv"]) == (2, 3)  # ... new value


def stream_process(config_file: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``saviorrec stream item-stats`` as its own process group (Python and its JVM); output to
    ``log`` (a pipe nobody reads would stop it when full)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "saviorrec.cli", "stream", "item-stats", "--config",
             str(config_file), *extra],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def many_files(inbox: Path, n: int) -> list[tuple]:
    """n event files, each a day of events for items 1-6, some days late (out of order)."""
    everything = []
    order = [0, 1, 3, 2, 4, 6, 5, 7, 8, 9, 10, 11][:n]
    for f, d in enumerate(order):
        rows = [(u, 1 + (u + d) % 6, float(1 + (u * d) % 5), at(1 + d, u % 24, u % 60))
                for u in range(1, 30)]
        rows.append((99, 1, 4.0, at(2 + d)))  # exactly the next midnight
        write_events(inbox / f"events-{f:02d}.parquet", rows)
        everything += rows
    return everything


@pytest.mark.slow
def test_kill_9_neither_loses_nor_double_counts(spark: SparkSession, local: Config,
                                                tmp_path: Path) -> None:
    cfg = local.with_overrides(stream={"trigger_seconds": 0.2},
                               spark={"master": "local[1]", "driver_memory": "1g"})
    config_file = tmp_path / "stream.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    lake = Lake.from_config(cfg)
    everything = many_files(lake.event_inbox, 12)
    files = lake.item_stats_stream

    log = tmp_path / "stream.log"
    kills = []
    # kill as soon as a batch's counts (batch 2) or its user states (batch 6) are written,
    # before it commits
    for target, folder in ((2, files.counts), (6, files.users)):
        proc = stream_process(config_file, log)
        try:
            marker = folder / f"batch-{target:012d}"
            deadline = time.monotonic() + 480
            while not marker.exists():
                assert proc.poll() is None, tail(log)
                assert time.monotonic() < deadline, f"the stream made no progress: {tail(log)}"
                time.sleep(0.01)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        commits = files.checkpoint / "commits"
        kills.append({"batch": target, "committed": (commits / str(target)).exists()})
    assert proc.returncode == -signal.SIGKILL
    assert not all(k["committed"] for k in kills), kills  # at least one died mid-batch

    done = stream_process(config_file, log, "--available-now")
    try:
        assert done.wait(timeout=480) == 0, tail(log)
    finally:
        if done.poll() is None:
            os.killpg(done.pid, signal.SIGKILL)
    snapshot = json.loads(files.progress.read_text())["snapshot"]
    assert snapshot == at(13).isoformat()  # the last file's last event: day 13 00:00 sharp
    got = online(cfg, list(range(1, 7)))
    pd.testing.assert_frame_equal(got, batch_as_of(spark, cfg, everything, at(13)))
    state = item_stats_stream.ItemStatsStream(spark, cfg, lambda rows: None).state(10**6)
    assert state.groupBy().sum("pv").first()[0] == len(everything)
    batches = sorted(int(p.name.split("-")[1]) for p in files.counts.glob("batch-*"))
    assert batches == list(range(12))  # one file per batch: each file in exactly one batch
    # the user rows (the same micro-batches): the batch job's serving rows, each event once
    users = sorted({r[0] for r in everything})
    got = normalise_user_rows(read_online_user_rows(fs.get_store(cfg), users))
    pd.testing.assert_frame_equal(got, batch_serving_rows(spark, cfg, everything))
    user_state = item_stats_stream.ItemStatsStream(spark, cfg, lambda rows: None).user_state(10**6)
    latest = user_state.toPandas().sort_values("batch_id").groupby("user_id").tail(1)
    assert latest["pv"].sum() == len(everything)


# --- the MovieLens benchmark's own checks (benchmarks/stream_stats.py), without Spark -------------
def stats_frame(rows: list[tuple]) -> pd.DataFrame:
    return normalise(pd.DataFrame(
        [{"item_id": i, "event_timestamp": at(d), "pv": pv, "clicks": 1, "ctr": 0.5,
          "pv_recent": 0, "clicks_recent": 0, "ctr_recent": 0.5, "pv_bucket": 1}
         for i, d, pv in rows], columns=ITEM_STATS.names))


def test_the_benchmark_comparison_sees_every_kind_of_difference() -> None:
    bench = load_benchmark("stream_stats")
    batch = stats_frame([(1, 2, 3), (2, 4, 5)])
    same = bench.compare(stats_frame([(1, 2, 3), (2, 4, 5)]), batch, [1, 2, 3])
    assert (same["mismatches"], same["items_with_rows"], same["items_online"]) == (0, 2, 2)
    for online in (stats_frame([(1, 2, 3), (2, 4, 6)]),  # a value
                   stats_frame([(1, 2, 3), (2, 3, 5)]),  # a timestamp
                   stats_frame([(1, 2, 3)]),  # a row missing online
                   stats_frame([(1, 2, 3), (2, 4, 5), (3, 1, 1)])):  # a row that should not be
        assert bench.compare(online, batch, [1, 2, 3])["mismatches"] == 1


def test_the_benchmark_files_hold_every_event_once_some_late() -> None:
    bench = load_benchmark("stream_stats")
    events = pd.DataFrame({"user_id": range(1000), "item_id": [1 + u % 7 for u in range(1000)],
                           "rating": 4.0, "event_timestamp": [at(u % 50, u % 24)
                                                              for u in range(1000)]})
    files, n_late = bench.event_files(events, 10, 0.05, seed=0)
    assert len(files) == 10 and 20 < n_late < 80
    assert pd.concat(files)["user_id"].sort_values().tolist() == list(range(1000))
    starts = [f["event_timestamp"].min() for f in files]
    assert starts[1] < starts[0]  # the first pair arrives swapped


def test_the_benchmark_result_holds_only_when_every_variant_does() -> None:
    bench = load_benchmark("stream_stats")

    def result(store: str, cadence: str, ok: bool) -> dict:
        return {**{k: 0 for k in bench.VARIANT_KEYS}, "store": store, "cadence": cadence,
                "online_equals_batch": ok, "rounds": []}

    out = bench.merge(None, result("sqlite (local)", "daily", True))
    out = bench.merge(out, result("redis (production)", "daily", False))
    assert out["online_equals_batch"] is False and set(out["variants"]) == {"sqlite-daily",
                                                                           "redis-daily"}
    out = bench.merge(out, result("redis (production)", "daily", True))
    assert out["online_equals_batch"] is True and out["rounds"] == []
