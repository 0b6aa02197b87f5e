"""The streaming item_stats job against the batch job on the whole MovieLens event stream.

    python benchmarks/stream_stats.py [--events runs/movielens/lake/raw/events.parquet]
        [--files 24] [--rounds 3] [--late-fraction 0.01] [--cadence daily] [--redis]

The events (a finished run's ``lake/raw/events.parquet``, read only; or, with none, a fresh
``saviorrec data prepare`` of ../shared/data/ml-latest-small in the work folder) are cut into
``--files`` event files in time order. Then, to make arrival out of order across files, a
``--late-fraction`` of the events (seeded) is moved 1-3 files later than its own, and every
fifth pair of neighbouring files is dropped in swapped order. The files are fed to
``saviorrec stream item-stats``'s code (spark_jobs.item_stats_stream with the Feast sink of
feature_repo.stream_sink, a real Feast store: sqlite, or Redis with ``--redis``) in ``--rounds``
runs on one checkpoint (``available_now``: a restart each round).

After each round every catalogue item's online row (read back from Feast, timestamp included)
is compared with the batch job's row for the same time (its latest row stamped <= the stream's
snapshot): the batch job's transform over the events fed so far, and after the last round also
the batch pipeline itself (``spark_jobs.runner.run_jobs``: samples, then item_stats) over the
whole stream. An item without a batch row must have none online. Equality is exact (ints,
float32 rates, timestamps).

Writes the key "stream" of benchmarks/results/live_coldstart.json (other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_common import REPO_ROOT, ensure_repo_on_path, run_header, write_json_atomic

ensure_repo_on_path()

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from saviorrec.config import Config, load_config
from saviorrec.lake import Lake
from saviorrec.schema import EVENTS, ITEM_STATS

RESULTS = REPO_ROOT / "benchmarks" / "results" / "live_coldstart.json"
DEFAULT_EVENTS = REPO_ROOT / "runs" / "movielens" / "lake" / "raw" / "events.parquet"


def source_tables(events_path: Path | None, work: Path) -> tuple[Path, Path]:
    """(events.parquet, items.parquet): a finished run's, or a fresh prepare in ``work``."""
    if events_path is not None and events_path.is_file():
        return events_path, events_path.with_name("items.parquet")
    from saviorrec.datasets.prepare import prepare

    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(work / "prepared")})
    prepare(cfg)
    lake = Lake.from_config(cfg)
    return lake.events, lake.items


def event_files(events: pd.DataFrame, n_files: int, late_fraction: float, seed: int,
                ) -> tuple[list[pd.DataFrame], int]:
    """Cut the stream into files in time order; some events late, some files swapped."""
    events = events.sort_values(["event_timestamp", "user_id", "item_id"]).reset_index(drop=True)
    home = np.repeat(np.arange(n_files), [len(c) for c in np.array_split(events.index, n_files)])
    rng = np.random.default_rng(seed)
    late = rng.random(len(events)) < late_fraction
    shift = rng.integers(1, 4, size=len(events))
    target = np.where(late, np.minimum(home + shift, n_files - 1), home)
    n_late = int((target != home).sum())
    files = [events[target == f] for f in range(n_files)]
    order = list(range(n_files))
    for i in range(0, n_files - 1, 5):  # every fifth pair arrives swapped
        order[i], order[i + 1] = order[i + 1], order[i]
    return [files[i] for i in order], n_late


def write_file(frame: pd.DataFrame, path: Path) -> None:
    """Drop one event file whole: a dot name (the file source skips it), then rename."""
    table = pa.Table.from_pandas(frame[EVENTS.names], schema=EVENTS.arrow_schema(),
                                 preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, coerce_timestamps="us")
    os.replace(tmp, path)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[ITEM_STATS.names].copy()
    for column in ITEM_STATS.columns:
        if column.dtype in ("int64", "float32"):
            frame[column.name] = frame[column.name].astype(column.dtype)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.sort_values("item_id").reset_index(drop=True)


def latest_at(batch_rows: pd.DataFrame, when: pd.Timestamp) -> pd.DataFrame:
    """Each item's latest batch row stamped <= when (Feast's point-in-time rule)."""
    rows = normalise(batch_rows)
    rows = rows[rows["event_timestamp"] <= when]
    return rows.sort_values("event_timestamp").groupby("item_id").tail(1) \
        .sort_values("item_id").reset_index(drop=True)


def compare(online: pd.DataFrame, batch: pd.DataFrame, item_ids: list[int]) -> dict[str, Any]:
    """Every item of ``item_ids``: the same row online and in batch, or no row in either."""
    names = [n for n in ITEM_STATS.names if n != "item_id"]
    merged = pd.DataFrame({"item_id": item_ids}).merge(
        online, on="item_id", how="left").merge(batch, on="item_id", how="left",
                                                suffixes=("_online", "_batch"))
    differs = np.zeros(len(merged), dtype=bool)
    for n in names:
        a, b = merged[f"{n}_online"], merged[f"{n}_batch"]
        differs |= ~((a == b) | (a.isna() & b.isna())).to_numpy()
    bad = merged[differs]
    return {
        "items_compared": len(item_ids),
        "items_with_rows": int(merged["pv_batch"].notna().sum()),
        "items_online": int(merged["pv_online"].notna().sum()),
        "mismatches": int(differs.sum()),
        "first_mismatches": json.loads(bad.head(5).to_json(orient="records", date_format="iso")),
    }


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def stub_sources(cfg: Config) -> None:
    """Empty batch sources of the views this benchmark does not use, so that Feast applies."""
    from saviorrec.schema import ITEM_MULTIMODAL, SEQUENCES

    lake = Lake.from_config(cfg)
    seq = lake.spark("sequences")
    seq.mkdir(parents=True, exist_ok=True)
    pq.write_table(SEQUENCES.arrow_schema().empty_table(), seq / "part-00000.parquet")
    lake.item_multimodal.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ITEM_MULTIMODAL.arrow_schema().empty_table(), lake.item_multimodal)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from feature_repo import store as fs
    from feature_repo.stream_sink import item_stats_sink, read_online_item_stats
    from spark_jobs import item_stats_stream
    from spark_jobs.item_stats import item_stats
    from spark_jobs.runner import run_jobs
    from spark_jobs.samples import with_label
    from spark_jobs.session import build_session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stream_stats-"))
    work.mkdir(parents=True, exist_ok=True)
    events_path, items_path = source_tables(args.events, work)
    events = pq.read_table(events_path).to_pandas()
    item_ids = sorted(int(i) for i in pq.read_table(items_path, columns=["item_id"])
                      .column("item_id").to_pylist())
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(work / "run")}, stats={"snapshot_cadence": args.cadence},
        spark={"master": args.master, "driver_memory": "2g", "shuffle_partitions": 4},
        stream={"max_files_per_trigger": args.files_per_batch})
    redis = None
    if args.redis:
        redis, url = start_redis(work)
        os.environ[cfg.feast.redis_env] = url
        cfg = cfg.with_overrides(feast={"profile": "production"})
    lake = Lake.from_config(cfg)
    if lake.root.exists():
        shutil.rmtree(lake.root)
    files, n_late = event_files(events, args.files, args.late_fraction, args.seed)
    spark = build_session(cfg.spark)
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    try:
        # the batch pipeline over the whole stream: prepare's tables, then samples, item_stats
        lake.events.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(events_path, lake.events)
        shutil.copyfile(items_path, lake.items)
        t0 = time.perf_counter()
        batch_report = run_jobs(cfg, ["samples", "item_stats"])
        batch_seconds = time.perf_counter() - t0
        batch_job_rows = spark.read.parquet(str(lake.spark("item_stats"))).toPandas()
        stub_sources(cfg)
        fs.apply(cfg)
        sink = item_stats_sink(cfg)
        store = fs.get_store(cfg)

        cuts = sorted({round(args.files * (r + 1) / args.rounds) for r in range(args.rounds)})
        rounds, fed, done = [], [], 0
        for cut in cuts:
            for i in range(done, cut):
                write_file(files[i], lake.event_inbox / f"events-{i:03d}.parquet")
                fed.append(files[i])
            done = cut
            t0 = time.perf_counter()
            report = item_stats_stream.run(spark, cfg, sink, available_now=True)
            seconds = time.perf_counter() - t0
            snapshot = pd.Timestamp(report["last_batch"]["snapshot"])
            so_far = pd.concat(fed, ignore_index=True)
            batch_rows = item_stats(
                spark.createDataFrame(so_far[EVENTS.names], EVENTS.spark_ddl())
                .transform(with_label, cfg.labels.click_threshold), cfg).toPandas()
            online = normalise(read_online_item_stats(store, item_ids))
            entry = {"files_fed": cut, "events_fed": len(so_far), "snapshot": str(snapshot),
                     "stream_seconds": round(seconds, 2),
                     "last_batch_id": report["last_batch"]["batch_id"],
                     "vs_batch_transform": compare(online, latest_at(batch_rows, snapshot),
                                                   item_ids)}
            if cut == args.files:
                entry["vs_batch_job"] = compare(online, latest_at(batch_job_rows, snapshot),
                                                item_ids)
            rounds.append(entry)
            print(json.dumps(entry, default=str), flush=True)
        quarantined = report["quarantined"]
    finally:
        spark.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)
    checks = [r["vs_batch_transform"] for r in rounds] + [rounds[-1]["vs_batch_job"]]
    return {
        "online_equals_batch": all(c["mismatches"] == 0 for c in checks),
        "items_compared": rounds[-1]["vs_batch_job"]["items_compared"],
        "items_with_rows": rounds[-1]["vs_batch_job"]["items_with_rows"],
        "mismatches": sum(c["mismatches"] for c in checks),
        "events": len(events),
        "files": args.files,
        "late_events": n_late,
        "quarantined_files": quarantined["files"],
        "cadence": args.cadence,
        "store": "redis (production profile)" if args.redis else "sqlite (local profile)",
        "stream_seconds": round(sum(r["stream_seconds"] for r in rounds), 2),
        "batch_job_seconds": round(batch_seconds, 2),
        "batch_job_rows": batch_report["jobs"]["item_stats"]["rows"]["item_stats"],
        "rounds": rounds,
        "source": str(events_path),
        "spark_master": args.master,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=Path,
                        default=DEFAULT_EVENTS if DEFAULT_EVENTS.is_file() else None,
                        help="events.parquet of a finished run (read only; default: %(default)s)")
    parser.add_argument("--workdir", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--files-per-batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--late-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cadence", choices=["daily", "hourly"], default="daily")
    parser.add_argument("--master", default="local[1]")
    parser.add_argument("--redis", action="store_true",
                        help="online store: a redis-server started here (production profile)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = {**run(args), **run_header(sys.argv)}
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1, default=str))
    if not args.no_write:
        existing = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        write_json_atomic(RESULTS, {**existing, "stream": merge(existing.get("stream"), result)})
    return 0 if result["online_equals_batch"] else 1


MAIN_VARIANT = "sqlite-daily"
VARIANT_KEYS = ("online_equals_batch", "items_compared", "items_with_rows", "mismatches",
                "late_events", "stream_seconds", "batch_job_rows", "date_utc", "command")


def merge(previous: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """The "stream" key: the default run (sqlite, daily) in full, every store and cadence run
    summed up under "variants"; online_equals_batch holds when it holds for all of them."""
    name = f"{'redis' if result['store'].startswith('redis') else 'sqlite'}-{result['cadence']}"
    previous = previous or {}
    variants = {**previous.get("variants", {}), name: {k: result[k] for k in VARIANT_KEYS}}
    out = dict(result) if name == MAIN_VARIANT else \
        {k: v for k, v in previous.items() if k != "variants"}
    out["variants"] = variants
    out["online_equals_batch"] = all(v["online_equals_batch"] for v in variants.values())
    return out


if __name__ == "__main__":
    sys.exit(main())
