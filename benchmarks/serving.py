"""Online ranking service on loopback: latency, throughput and errors, plus the floors.

    .venv/bin/python benchmarks/serving.py [--requests 10000] [--concurrency 4] [--rebuild]

Builds (cached in --work-dir; rebuilt when the code that builds it changed, see WORLD_SOURCES,
or with --rebuild) a world of 5,000 items and 500 users with the paper-sized
inputs (d=64, L=3 + 1 semantic ids, sequences of 50) through the real stages: lake tables ->
Feast apply + materialize into a real redis-server (production profile, with a password) ->
a full-variant SaviorRanker (config defaults, random weights) -> run_export. Then starts
``saviorrec serve`` as a real uvicorn process and drives it with concurrent httpx clients for
1, 50, 200 and 500 candidates. In the same run it measures the floors (the Feast online read
alone, through Feast's API and through the service's direct Redis reader; the service's read
with a warm item cache; the SavedModel call alone, as served (XLA, candidates padded to a
bucket) and as the plain graph) and restarts Redis in the middle of a load phase. Prints a
table and writes benchmarks/results/serving.json.

    .venv/bin/python benchmarks/serving.py --mode catalogue [--items 1000000] [--users 10000]
        [--load-path write|materialize] [--requests 10000] [--build-only]

The catalogue mode (issue 25 item 4) builds a world of --items items column-wise (same lake
tables, one row per entity), loads it into redis-server through Feast (``write``:
FeatureStore.write_to_online_store, ``materialize``: Feast's Spark offline store then the
online write; each timed, with Redis INFO memory before and after), exports a ranker whose item
vocabulary covers the catalogue, and drives ``saviorrec serve`` at 200 candidates drawn
uniformly from the catalogue: a cold phase (empty item cache), a steady one (the same process
after), and one with the item cache off (item_cache_ttl_s = 0), each with the cache hit rate
from /metrics; then the per-request floors in-process. It updates only its key (serving_1M)
of benchmarks/results/pipeline_scale.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    REPO_ROOT,
    count_label,
    device_info,
    ensure_repo_on_path,
    format_table,
    library_versions,
    machine_load,
    run_header,
    source_stamp,
    update_key_atomic,
    write_json_atomic,
)

ensure_repo_on_path()
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the world builder shared with the tests

REDIS_ENV, PASSWORD = "SAVIORREC_BENCH_REDIS", "bench-Pa55"
SIZES = (1, 50, 200, 500)
N_ITEMS, N_USERS = 5_000, 500
RESULTS = REPO_ROOT / "benchmarks" / "results" / "serving.json"
# The code that builds the cached world (lake tables, Feast, the exported SavedModel): a world
# built by another version of it is rebuilt instead of measured.
WORLD_SOURCES = ("tf_ranker", "feature_repo", "spark_jobs", "saviorrec", "configs/movielens.yaml",
                 "tests/test_serving_fixture.py", "benchmarks/serving.py")
STAMP_FILE = "world_source_stamp.txt"


def stale_world(work: Path, stamp: str) -> str | None:
    """Why the world cached in ``work`` cannot be measured (None: it can)."""
    if not (work / "dump.rdb").is_file():
        return None if not work.exists() else "no Redis dump in it"
    built = (work / STAMP_FILE).read_text().strip() if (work / STAMP_FILE).is_file() else None
    if built != stamp:
        return f"built by other code (source stamp {built or 'missing'}, now {stamp})"
    return None


def open_world(work: Path, stamp: str, args: argparse.Namespace,
               keep_stale: bool = False) -> tuple[bool, Any, Any]:
    """The world cached in ``work`` (removed first when stale, built by other code, unless
    ``keep_stale``, or with --rebuild) with its redis-server started: (whether the world must
    be built, the server, the benchmark's config)."""
    from conftest import RedisServer

    stale = stale_world(work, stamp)
    if stale and keep_stale:
        print(f"measuring the cached world in {work} although it is {stale} (--keep-world)")
        stale = None
    if stale:
        print(f"the world cached in {work} is {stale}: rebuilding it", flush=True)
    if (args.rebuild or stale) and work.exists():
        shutil.rmtree(work)
    fresh = not (work / "dump.rdb").is_file()
    work.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(work, password=PASSWORD)
    redis_server.start()
    os.environ[REDIS_ENV] = redis_server.url
    cfg = bench_config(work)
    if args.tf_threads is not None:
        cfg = cfg.with_overrides(serving={"tf_threads": args.tf_threads})
    if args.workers is not None:
        cfg = cfg.with_overrides(serving={"workers": args.workers})
    return fresh, redis_server, cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_config(work: Path) -> Any:
    from saviorrec.config import load_config

    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml")
    return cfg.with_overrides(run={"root": str(work / "run")}, encoder={"dim": 64},
                              rqvae={"levels": 3}, sequences={"max_len": 50},
                              feast={"profile": "production", "redis_env": REDIS_ENV})


def build(cfg: Any, redis_server: Any) -> None:
    import redis
    from test_serving_fixture import build_world

    build_world(cfg, n_items=N_ITEMS, n_users=N_USERS)
    redis.Redis.from_url(redis_server.url).save()
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:  # materialize's Spark: not to compete with the measured server
        session.stop()


def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    arr = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "mean_ms": round(float(arr.mean()), 3)}


def request_bodies(n: int, count: int, seed: int) -> list[dict[str, Any]]:
    """Random users (5% unknown) and n distinct candidates (2% beyond the catalogue)."""
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        user = int(rng.integers(1, N_USERS + 1)) if rng.random() > 0.05 else 10**6
        items = rng.choice(int(N_ITEMS * 1.02), n, replace=False) + 1
        bodies.append({"user_id": user, "item_ids": items.tolist()})
    return bodies


def floors(cfg: Any, repeats: int) -> dict[str, Any]:
    """The Feast online read alone and the SavedModel call alone, in this process."""
    from feature_repo.online import online_features
    from serving.ranker import Ranker
    from serving.service import RankingService, model_dir
    from serving.tensors import build_inputs

    service = RankingService.start(cfg)
    graph = Ranker(model_dir(cfg), xla=False)  # the SavedModel's plain graph, no padding
    assert service.reader.direct is not None
    out: dict[str, Any] = {}
    for n in SIZES:
        bodies = request_bodies(n, repeats, seed=n)
        for body in bodies:  # the server's cache is warm after its load phases: this one too
            service.reader.read(body["user_id"], body["item_ids"])
        timings: dict[str, list[float]] = {
            "feast_sdk_read": [], "direct_read": [], "cached_read": [], "build_tensors": [],
            "model_call": [], "model_call_graph": []}
        for body in bodies:
            user, items = body["user_id"], body["item_ids"]
            t0 = time.perf_counter()
            online_features(service.reader.store, user, items)
            t1 = time.perf_counter()
            service.reader.direct.read(user, items)  # the store, no cache
            t2 = time.perf_counter()
            features = service.reader.read(user, items)
            t3 = time.perf_counter()
            inputs = build_inputs(user, items, features.sequence.item_ids, features.items,
                                  service.layout, features.sequence.stats)
            t4 = time.perf_counter()
            service.ranker.predict(inputs)
            t5 = time.perf_counter()
            graph.predict(inputs)
            t6 = time.perf_counter()
            for key, a, b in (("feast_sdk_read", t0, t1), ("direct_read", t1, t2),
                              ("cached_read", t2, t3), ("build_tensors", t3, t4),
                              ("model_call", t4, t5), ("model_call_graph", t5, t6)):
                timings[key].append(1e3 * (b - a))
        out[str(n)] = {k: percentiles(v[2:]) for k, v in timings.items()}  # first 2: warm-up
        out[str(n)]["model_rows"] = service.ranker.bucket(n)
    for key, name in (("model_call", "model_500_over_50"),
                      ("model_call_graph", "model_graph_500_over_50")):
        out[name] = round(out["500"][key]["p50_ms"] / out["50"][key]["p50_ms"], 2)
    return out


def server_metrics(url: str) -> dict[str, float]:
    """The server's item-cache counters (GET /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if "item_cache" in s.name}


class Load:
    """``concurrency`` threads, each with its own keep-alive httpx client, sharing a queue."""

    def __init__(self, url: str, bodies: list[dict[str, Any]], concurrency: int) -> None:
        self.url, self.bodies, self.concurrency = url, bodies, concurrency
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.completed_at: list[tuple[float, bool]] = []
        self._next = 0
        self._lock = threading.Lock()

    def _worker(self) -> None:
        import httpx

        with httpx.Client(timeout=30.0) as client:
            while True:
                with self._lock:
                    if self._next >= len(self.bodies):
                        return
                    body = self.bodies[self._next]
                    self._next += 1
                start = time.perf_counter()
                try:
                    status = str(client.post(self.url, json=body).status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                end = time.perf_counter()
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.completed_at.append((end, status == "200"))
                    if status == "200":
                        self.latencies.append(1e3 * (end - start))

    def run(self, during: Any = None) -> dict[str, Any]:
        threads = [threading.Thread(target=self._worker) for _ in range(self.concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        if during is not None:
            during(self)
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        errors = sum(v for k, v in self.statuses.items() if k != "200")
        return {"requests": len(self.bodies), "concurrency": self.concurrency,
                "seconds": round(seconds, 2), "requests_per_s": round(len(self.bodies) / seconds, 1),
                "errors": errors, "statuses": self.statuses, **percentiles(self.latencies)}


def start_server(cfg: Any, work: Path, port: int, ready_s: float = 180
                 ) -> subprocess.Popen[bytes]:
    import httpx
    import yaml

    config_path = work / "serving.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "saviorrec.cli", "serve", "--config",
                             str(config_path), "--port", str(port)],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: see {work / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200 and \
                    workers_counted(f"http://127.0.0.1:{port}/metrics") == cfg.serving.workers:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"server not ready within {ready_s} s")


def workers_counted(url: str) -> int:
    """saviorrec_serving_workers of GET /metrics: the workers that have started."""
    import httpx

    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith("saviorrec_serving_workers "):
            return int(float(line.split()[1]))
    return 0


def restart_phase(url: str, redis_server: Any, requests: int, concurrency: int) -> dict[str, Any]:
    """Load at 200 candidates; Redis is stopped and started again (from its snapshot) midway."""
    events: dict[str, float] = {}

    def restart(load: Load) -> None:
        while len(load.completed_at) < requests // 3:
            time.sleep(0.01)
        events["stop"] = time.perf_counter()
        redis_server.stop()
        redis_server.start()  # blocks until the port is open again; loads the snapshot
        events["up"] = time.perf_counter()

    load = Load(url, request_bodies(200, requests, seed=7), concurrency)
    result = load.run(during=restart)
    after = [ok for t, ok in load.completed_at if t > events["up"] + 1.0]
    result.update({"redis_down_s": round(events["up"] - events["stop"], 3),
                   "lost_requests": result["errors"],
                   "requests_after_restart": len(after),
                   "errors_after_restart": sum(not ok for ok in after)})
    return result


# --- the large-catalogue mode (--mode catalogue; issue 25 item 4) ------------------------------
# 1M items, 200 candidates drawn uniformly per request: the item cache (50,000 items by default)
# rarely hits, so this measures the read of ~250 items from Redis on nearly every request.
CATALOGUE_RESULTS = REPO_ROOT / "benchmarks" / "results" / "pipeline_scale.json"
CATALOGUE_CANDIDATES = 200
LOAD_CHUNK = 50_000  # rows per Feast online write: bounds the protos Feast holds at once
WORLD_FILE = "world_build.json"  # how the cached catalogue world was built (loading, memory)


def _lists(values: np.ndarray, value_type: Any) -> Any:
    """A (rows, width) array as an arrow list column, without Python lists."""
    import pyarrow as pa

    rows, width = values.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=value_type))


def catalogue_tables(cfg: Any, n_items: int, n_users: int, seed: int = 0) -> dict[str, Any]:
    """The lake tables of a large world, built column-wise (the tests' ``write_world`` builds
    Python rows: minutes and ~4 GB of Python floats at 1M items). Same layout, one row per
    entity: items 1..n-4 have statistics, 1..n-2 a multimodal row (n-3, n-2 cold; n-1, n
    unknown); users 1..n_users a left-padded sequence of catalogue items (user 1: full)."""
    import pyarrow as pa
    from test_serving_fixture import RQVAE_VERSION, T0

    from saviorrec.schema import ITEM_MULTIMODAL, ITEM_STATS, SEQUENCES

    rng = np.random.default_rng(seed)

    def ts(days: int, n: int) -> Any:
        moment = np.datetime64((T0 + timedelta(days=days)).replace(tzinfo=None), "us")
        return pa.array(np.full(n, moment), pa.timestamp("us", tz="UTC"))

    ids = np.arange(1, n_items - 3, dtype=np.int64)
    pv = rng.integers(0, 300, ids.size)
    clicks = np.floor(rng.random(ids.size) * (pv + 1)).astype(np.int64)
    buckets = np.asarray(cfg.stats.pv_buckets)
    stats = pa.Table.from_pydict({
        "item_id": ids, "event_timestamp": ts(20, ids.size), "pv": pv, "clicks": clicks,
        "ctr": ((clicks + 5) / (pv + 10)).astype(np.float32), "pv_recent": pv // 2,
        "clicks_recent": clicks // 2,
        "ctr_recent": ((clicks // 2 + 5) / (pv // 2 + 10)).astype(np.float32),
        "pv_bucket": (np.searchsorted(buckets, pv, side="right") - 1).astype(np.int64),
    }, schema=ITEM_STATS.arrow_schema())
    mm_ids = np.arange(1, n_items - 1, dtype=np.int64)
    width = cfg.rqvae.levels + 1
    sids = rng.integers(0, cfg.rqvae.codebook_size, (mm_ids.size, width), dtype=np.int64)
    sids[:, -1] = 0
    multimodal = pa.Table.from_pydict({
        "item_id": mm_ids,
        "embedding": _lists(rng.standard_normal((mm_ids.size, cfg.encoder.dim), np.float32),
                            pa.float32()),
        "semantic_ids": _lists(sids, pa.int64()),
        "encoder_version": pa.array(["enc-test"] * mm_ids.size),
        "rqvae_version": pa.array([RQVAE_VERSION] * mm_ids.size),
        "event_timestamp": ts(2, mm_ids.size),
    }, schema=ITEM_MULTIMODAL.arrow_schema())
    seq_len = cfg.sequences.max_len
    users = np.arange(1, n_users + 1, dtype=np.int64)
    lengths = rng.integers(0, seq_len + 1, users.size)
    lengths[0] = seq_len
    seq = rng.integers(1, n_items + 1, (users.size, seq_len), dtype=np.int64)
    seq[np.arange(seq_len)[None, :] < (seq_len - lengths)[:, None]] = 0  # left padding
    user_pv = rng.integers(lengths, 4 * seq_len + 1)
    user_clicks = rng.integers(lengths, user_pv + 1)
    sequences = pa.Table.from_pydict({
        "user_id": users, "event_timestamp": ts(30, users.size),
        "seq_item_ids": _lists(seq, pa.int64()), "seq_len": lengths.astype(np.int64),
        "user_pv": user_pv, "user_clicks": user_clicks,
        "user_ctr": ((user_clicks + 1) / (user_pv + 2)).astype(np.float32),
    }, schema=SEQUENCES.arrow_schema())
    return {"item_stats": stats, "item_multimodal": multimodal, "user_sequence": sequences}


def write_catalogue_world(cfg: Any, tables: dict[str, Any], n_items: int, n_users: int) -> Any:
    """The tables into the lake (Spark-like folders, the encoder's file), plus the training
    tables run_export reads its sample request from; returns the World of those few rows."""
    import pyarrow.parquet as pq
    from test_serving_fixture import World, _folder, _write_training_tables

    from saviorrec.lake import Lake

    lake = Lake.from_config(cfg)
    _folder(tables["item_stats"], lake.spark("item_stats"))
    _folder(tables["user_sequence"], lake.spark("sequences"))
    lake.item_multimodal.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(tables["item_multimodal"], lake.item_multimodal, coerce_timestamps="us")
    world = World(cfg, n_items, n_users)
    user1 = tables["user_sequence"].slice(0, 1).to_pylist()[0]
    world.sequences[1] = user1["seq_item_ids"]
    world.user_stats[1] = [float(user1["user_pv"]), float(user1["user_clicks"]),
                           float(user1["user_ctr"])]
    wanted = {1, 2, 3, 4, n_items - 3, *(i for i in world.sequences[1] if i)}
    for item in sorted(wanted):
        if item <= n_items - 4:
            row = tables["item_stats"].slice(item - 1, 1).to_pylist()[0]
            world.stats[item] = {k: float(np.float32(v)) for k, v in row.items()
                                 if k not in ("item_id", "event_timestamp")}
        if item <= n_items - 2:
            world.multimodal[item] = tables["item_multimodal"].slice(item - 1, 1).to_pylist()[0]
    _write_training_tables(world)
    return world


def redis_memory(client: Any) -> dict[str, int]:
    info = client.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "used_memory_rss", "used_memory_dataset")}


def load_online(cfg: Any, tables: dict[str, Any], path: str, client: Any) -> dict[str, Any]:
    """Load the tables into Redis through Feast: ``materialize`` (Feast's Spark offline store
    reads the lake, then writes online) or ``write`` (``FeatureStore.write_to_online_store``
    of the same rows, LOAD_CHUNK at a time). INFO memory before and after."""
    from test_serving_fixture import T0

    from feature_repo import store as fs

    before = redis_memory(client)
    began = time.perf_counter()
    seconds: dict[str, float] = {}
    if path == "materialize":
        fs.materialize(cfg, (T0 - timedelta(days=1)).isoformat(),
                       (T0 + timedelta(days=60)).isoformat())
        seconds["all_views"] = round(time.perf_counter() - began, 2)
    else:
        store = fs.get_store(cfg)
        for view, table in tables.items():
            start = time.perf_counter()
            for offset in range(0, table.num_rows, LOAD_CHUNK):
                store.write_to_online_store(view, table.slice(offset, LOAD_CHUNK).to_pandas())
            seconds[view] = round(time.perf_counter() - start, 2)
    total = time.perf_counter() - began
    after = redis_memory(client)
    rows = sum(t.num_rows for t in tables.values())
    return {"path": path, "seconds": round(total, 2), "seconds_by_view": seconds,
            "rows": {v: t.num_rows for v, t in tables.items()},
            "rows_per_s": round(rows / total, 1), "redis_before": before, "redis_after": after}


def memory_per_item(client: Any, cfg: Any, load: dict[str, Any], n_items: int, n_users: int,
                    sample: int = 1000) -> dict[str, Any]:
    """INFO used_memory after - before over the items (the users' hashes, a few %, included),
    and Redis' own MEMORY USAGE of a sample of item and user hashes."""
    from feature_repo.online import open_online_store
    from feature_repo.redis_reader import RedisDirectReader

    reader = RedisDirectReader(open_online_store(cfg, redis_url=os.environ[REDIS_ENV]), client)
    rng = np.random.default_rng(5)
    items = rng.integers(1, n_items - 3, sample)
    users = rng.integers(1, n_users + 1, min(sample, n_users))
    item_bytes = [client.memory_usage(reader._item_key(int(i)), samples=0) for i in items]
    user_bytes = [client.memory_usage(reader._key("user_id", int(u)), samples=0) for u in users]
    grown = load["redis_after"]["used_memory"] - load["redis_before"]["used_memory"]
    return {"used_memory_before": load["redis_before"]["used_memory"],
            "used_memory_after": load["redis_after"]["used_memory"],
            "used_memory_rss_after": load["redis_after"]["used_memory_rss"],
            "bytes_per_item_info": round(grown / n_items, 1),
            "memory_usage_item_hash_mean": round(float(np.mean(item_bytes)), 1),
            "memory_usage_user_hash_mean": round(float(np.mean(user_bytes)), 1),
            "keys": client.dbsize()}


def build_catalogue(cfg: Any, redis_server: Any, n_items: int, n_users: int,
                    load_path: str) -> dict[str, Any]:
    """Lake tables -> Feast apply -> load into Redis (timed) -> a full-variant ranker whose
    item vocabulary covers the catalogue (ids 0..n_items) -> run_export; snapshot Redis."""
    import redis
    from test_serving_fixture import save_ranker

    from feature_repo import store as fs
    from tf_ranker.export import run_export

    client = redis.Redis.from_url(redis_server.url)
    t0 = time.perf_counter()
    tables = catalogue_tables(cfg, n_items, n_users)
    world = write_catalogue_world(cfg, tables, n_items, n_users)
    lake_s = time.perf_counter() - t0
    fs.apply(cfg)
    load = load_online(cfg, tables, load_path, client)
    print(f"loaded {n_items} items through {load_path} in {load['seconds']} s", flush=True)
    memory = memory_per_item(client, cfg, load, n_items, n_users)
    del tables
    t1 = time.perf_counter()
    save_ranker(world)
    run_export(cfg, variant="full", seed=0)
    export_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    client.save()
    info = {"lake_tables_s": round(lake_s, 2), "loading": load, "redis_memory": memory,
            "ranker_and_export_s": round(export_s, 2),
            "redis_save_s": round(time.perf_counter() - t2, 2),
            "model_item_vocabulary": n_items + 1, "users": n_users, "items": n_items}
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()
    return info


def wait_loaded(url: str, timeout_s: float = 600) -> float:
    """Seconds until a restarted redis-server has read its snapshot (it answers LOADING before)."""
    import redis

    client, began = redis.Redis.from_url(url), time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        try:
            if client.info("persistence")["loading"] == 0:
                return time.perf_counter() - began
        except redis.exceptions.BusyLoadingError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"redis-server did not finish loading its snapshot in {timeout_s} s")


def catalogue_bodies(count: int, seed: int, n_items: int, n_users: int) -> list[dict[str, Any]]:
    """Random users (5% unknown) and CATALOGUE_CANDIDATES distinct items drawn uniformly from
    the catalogue 1..n_items."""
    rng = np.random.default_rng(seed)
    return [{"user_id": int(rng.integers(1, n_users + 1)) if rng.random() > 0.05 else 10**9,
             "item_ids": (rng.choice(n_items, CATALOGUE_CANDIDATES, replace=False) + 1).tolist()}
            for _ in range(count)]


def server_counts(url: str) -> dict[str, float]:
    """Item-cache hits/misses and the per-stage latency sums and counts of GET /metrics, once
    every worker has written its last requests (serving.workers > 1: the summed counters are
    at most serving.counters.FLUSH_S old, so read until two reads 2 FLUSH_S apart agree)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from serving.counters import FLUSH_S

    text = httpx.get(url, timeout=10).text
    while True:
        time.sleep(2 * FLUSH_S)
        again = httpx.get(url, timeout=10).text
        if again == text:
            break
        text = again
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "item_cache" in s.name:
                out[s.name.removeprefix("saviorrec_serving_")] = s.value
            elif s.name.endswith(("request_seconds_sum", "request_seconds_count")):
                out[f"{s.name.removeprefix('saviorrec_serving_')}:{s.labels['stage']}"] = s.value
    return out


def phase_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    hits, misses = diff.get("item_cache_hits_total"), diff.get("item_cache_misses_total")
    out: dict[str, Any] = {"item_cache_hits": hits, "item_cache_misses": misses,
                           "item_cache_hit_rate": None if hits is None else
                           round(hits / max(hits + misses, 1), 4),
                           "item_cache_items_after": after.get("item_cache_items")}
    for stage in ("features", "model"):
        n = diff.get(f"request_seconds_count:{stage}", 0)
        out[f"server_{stage}_mean_ms"] = round(1e3 * diff[f"request_seconds_sum:{stage}"] / n,
                                               3) if n else None
    return out


def descendants(pid: int) -> list[int]:
    """The process and its children, theirs, ... (serving.workers > 1: uvicorn's workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:  # the thread ended
                pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants, all their threads
    (/proc/<pid>/stat), as long as they live."""
    total = 0.0
    for process in descendants(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended in between
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def catalogue_phase(url: str, bodies: list[dict[str, Any]], concurrency: int,
                    pids: dict[str, int], first: int = 1000) -> dict[str, Any]:
    """One load phase; with the CPU each process spent per request (server: every thread,
    TensorFlow's included; clients: this process), which other jobs on the machine do not
    inflate the way they inflate latency."""
    metrics = url.replace("/rank", "/metrics")
    before = server_counts(metrics)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    load = Load(url, bodies, concurrency)
    result = load.run()
    result["cpu_ms_per_request"] = {
        **{name: round(1e3 * (cpu_seconds(pid) - cpu_before[name]) / len(bodies), 3)
           for name, pid in pids.items()},
        "clients": round(1e3 * (time.process_time() - client_before) / len(bodies), 3)}
    result.update(phase_counts(before, server_counts(metrics)))
    result[f"first_{first}"] = percentiles(load.latencies[:first])  # in completion order
    return result


def read_items_before(reader: Any, item_ids: list[int]) -> dict[int, dict[str, Any]]:
    """RedisDirectReader.read_items as it was before this benchmark's changes (commit 0adc249):
    every key through Feast's serialize_entity_key (the reader kept up to 1M of them), every
    field through the generic ``decode``; kept here to measure the change in the same run."""
    from feature_repo.redis_reader import decode

    unique = list(dict.fromkeys(int(i) for i in item_ids))
    with reader.client.pipeline(transaction=False) as pipe:
        for item_id in unique:
            pipe.hmget(reader._key("item_id", item_id), reader._item_fields)
        replies = pipe.execute()
    names, defaults, items = reader._item_names, reader._defaults, {}
    for item_id, raw in zip(unique, replies, strict=True):
        values = {n: decode(r) for n, r in zip(names, raw, strict=True)}
        items[item_id] = {k: defaults[k] if v is None else v for k, v in values.items()}
    return items


def catalogue_floors(cfg: Any, n_items: int, n_users: int, repeats: int) -> dict[str, Any]:
    """Per request at 200 uniform candidates, in this process with the server stopped, wall
    and CPU (thread) time: the Redis read of every item as it was before and as it is now
    (what a request without cache hits costs), the read with a warm cache, the tensors, the
    SavedModel call as served. CPU time is what the other jobs on the machine cannot inflate."""
    from serving.service import RankingService
    from serving.tensors import build_inputs

    service = RankingService.start(cfg)
    direct = service.reader.direct
    assert direct is not None
    bodies = catalogue_bodies(repeats, seed=11, n_items=n_items, n_users=n_users)
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def timed(name: str, call: Any, *args: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        out = call(*args)
        cpu.setdefault(name, []).append(1e3 * (time.thread_time() - c))
        wall.setdefault(name, []).append(1e3 * (time.perf_counter() - w))
        return out

    for body in bodies:
        user, items = body["user_id"], body["item_ids"]
        wanted = items + [i for i in direct.read_sequence(user).item_ids if i]
        timed("direct_read_items_before", read_items_before, direct, wanted)
        timed("direct_read_items", direct.read_items, wanted)
        timed("direct_read", direct.read, user, items)
        service.reader.read(user, items)  # fills the cache with this request's items
        features = timed("cached_read", service.reader.read, user, items)
        inputs = timed("build_tensors", build_inputs, user, items, features.sequence.item_ids,
                       features.items, service.layout, features.sequence.stats)
        timed("model_call", service.ranker.predict, inputs)
    return {"wall": {k: percentiles(v[2:]) for k, v in wall.items()},
            "cpu": {k: percentiles(v[2:]) for k, v in cpu.items()}}


def catalogue_main(args: argparse.Namespace, argv: list[str]) -> int:
    """Build (or reuse) the large world, then three phases of --requests at 200 uniform
    candidates on a fresh ``saviorrec serve``: cold (empty item cache), steady (the same
    process, right after), no cache (a fresh process with item_cache_ttl_s = 0)."""
    import json

    import redis

    from serving.service import tf_threads

    n_items, n_users = args.items, args.users
    key = args.key or f"serving_{count_label(n_items)}"
    work = Path(args.work_dir or f"/tmp/saviorrec-serving-catalogue-{count_label(n_items)}")
    stamp = f"{source_stamp(WORLD_SOURCES)} items={n_items} users={n_users} load={args.load_path}"
    keep = args.keep_world and (work / WORLD_FILE).is_file()
    fresh, redis_server, cfg = open_world(work, stamp, args, keep_stale=keep)
    redis_load_s = round(wait_loaded(redis_server.url), 2)
    load_start = machine_load()
    phases: dict[str, Any] = {}
    server = None
    try:
        if fresh:
            print(f"building the {n_items}-item world (lake, Feast {args.load_path}, export) ...",
                  flush=True)
            built = build_catalogue(cfg, redis_server, n_items, n_users, args.load_path)
            built["built_by"] = {**run_header([Path(__file__).name, *argv]),
                                 "load": load_start}
            (work / WORLD_FILE).write_text(json.dumps(built, indent=2))
            (work / STAMP_FILE).write_text(stamp + "\n")
        built = json.loads((work / WORLD_FILE).read_text())
        print(f"world: {json.dumps({k: built[k] for k in ('loading', 'redis_memory')})}",
              flush=True)
        if args.build_only:
            phases = {}
        else:
            client = redis.Redis.from_url(redis_server.url)
            memory_before = redis_memory(client)
            for name, cache_on, seed in (("cold", True, 1), ("steady", True, 2),
                                         ("no_cache", False, 3)):
                if name != "steady":
                    if server is not None:
                        server.terminate()
                        server.wait(timeout=30)
                    phase_cfg = cfg if cache_on else cfg.with_overrides(
                        serving={"item_cache_ttl_s": 0})
                    port = free_port()
                    # XLA compiles every candidate bucket at start-up: minutes under load
                    server = start_server(phase_cfg, work, port, ready_s=900)
                    url = f"http://127.0.0.1:{port}/rank"
                bodies = catalogue_bodies(args.requests, seed, n_items, n_users)
                assert redis_server.proc is not None
                phases[name] = catalogue_phase(url, bodies, args.concurrency, {
                    "server": server.pid, "redis_server": redis_server.proc.pid})
                phases[name]["load_after"] = machine_load()
                print(f"{name}: {json.dumps(phases[name])}", flush=True)
            server.terminate()
            server.wait(timeout=30)
            server = None
            memory_after = redis_memory(client)
            floor = catalogue_floors(cfg, n_items, n_users, args.floor_repeats)
            print(f"floors at 200 uniform candidates: {json.dumps(floor)}", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        redis_server.stop()

    result: dict[str, Any] = {
        **run_header([Path(__file__).name, *argv]),
        "machine": device_info(),
        "versions": library_versions(("numpy", "tensorflow", "keras", "feast", "redis",
                                      "fastapi", "uvicorn", "httpx", "pydantic", "pyarrow",
                                      "pyspark")),
        "redis_server": subprocess.run(["redis-server", "--version"], check=False,
                                       capture_output=True, text=True).stdout.strip(),
        "load": {"start": load_start, "end": machine_load()},
        "world": {"items": n_items, "users": n_users, "embedding_dim": cfg.encoder.dim,
                  "semantic_ids": cfg.rqvae.levels + 1, "sequence_length": cfg.sequences.max_len,
                  "variant": "full (random weights)", "model_item_vocabulary": n_items + 1,
                  "profile": "production (redis-server with a password)",
                  "source_stamp": stamp, "world_reused": not fresh,
                  "built_with_stamp": (work / STAMP_FILE).read_text().strip(),
                  "redis_snapshot_load_s": redis_load_s},
        "build": built,
        "loading_path": built["loading"]["path"], "loading_s": built["loading"]["seconds"],
        "redis_bytes_per_item": built["redis_memory"]["bytes_per_item_info"],
        "serving": {**{k: getattr(cfg.serving, k)
                       for k in ("xla", "item_cache_ttl_s", "item_cache_items", "max_candidates",
                                 "tf_threads", "online_reader", "workers",
                                 "item_cache_min_hit_rate")},
                    "tf_threads_per_worker": tf_threads(cfg.serving)},
    }
    if phases:
        requests = {name: p["requests"] for name, p in phases.items()}
        errors = {name: p["errors"] for name, p in phases.items()}
        result.update({
            "p99_ms_cold": phases["cold"]["p99_ms"], "p99_ms_steady": phases["steady"]["p99_ms"],
            "p99_ms_no_cache": phases["no_cache"]["p99_ms"],
            "errors": sum(errors.values()), "requests": sum(requests.values()),
            "errors_by_phase": errors, "requests_by_phase": requests,
            "item_cache_hit_rate": {n: p["item_cache_hit_rate"] for n, p in phases.items()},
            "candidates_per_request": CATALOGUE_CANDIDATES, "concurrency": args.concurrency,
            "phases": phases, "redis_memory_at_phases": {"before": memory_before,
                                                         "after": memory_after},
            "floors_200": floor,
            "targets": {"p99_cold_le_60ms": phases["cold"]["p99_ms"] <= 60.0,
                        "p99_steady_le_40ms": phases["steady"]["p99_ms"] <= 40.0,
                        "zero_errors": all(e == 0 for e in errors.values())},
            "note": "cold: the first --requests after `saviorrec serve` started with an empty "
                    "item cache; steady: the next --requests on the same process; no_cache: a "
                    "fresh process with serving.item_cache_ttl_s = 0. Client threads, the "
                    "server and redis-server share the machine's 2 cores with others' jobs "
                    "(load above). floors_200: in-process, server stopped; cpu: the calling "
                    "thread's CPU time (the model's TensorFlow threads not counted); "
                    "direct_read_items_before: the reader's item read as of commit 0adc249. "
                    "cpu_ms_per_request server: the serve process and its workers."
                    + (f" {args.note}" if args.note else ""),
        })
    update_key_atomic(args.out or CATALOGUE_RESULTS, key, result)
    print(f"wrote {key} in {args.out or CATALOGUE_RESULTS}")
    return 0 if not phases or all(result["targets"].values()) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("sizes", "catalogue"), default="sizes",
                        help="sizes: the 5,000-item world at 1..500 candidates (serving.json); "
                             "catalogue: --items items, 200 uniform candidates, cold / steady / "
                             "no-cache phases (a key of pipeline_scale.json)")
    parser.add_argument("--work-dir", default=None,
                        help="default /tmp/saviorrec-serving-bench (sizes), "
                             "/tmp/saviorrec-serving-catalogue-<items> (catalogue)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--requests", type=int, default=10_000, help="at 200 candidates")
    parser.add_argument("--other-requests", type=int, default=1_000, help="at 1, 50, 500")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--floor-repeats", type=int, default=100)
    parser.add_argument("--tf-threads", type=int, default=None,
                        help="serving.tf_threads of the measured server (default: the config's)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results path (default {RESULTS.name}; catalogue: "
                             f"{CATALOGUE_RESULTS.name}, only --key updated)")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue: items")
    parser.add_argument("--users", type=int, default=10_000, help="catalogue: users")
    parser.add_argument("--load-path", choices=("write", "materialize"), default="write",
                        help="catalogue: how the world reaches Redis through Feast")
    parser.add_argument("--key", default=None, help="catalogue: results key (serving_1M)")
    parser.add_argument("--build-only", action="store_true",
                        help="catalogue: build and record loading and memory, no load phases")
    parser.add_argument("--workers", type=int, default=None,
                        help="serving.workers of the measured server (default: the config's)")
    parser.add_argument("--note", default="",
                        help="catalogue: appended to the result's note (e.g. the machine's load)")
    parser.add_argument("--keep-world", action="store_true",
                        help="catalogue: measure a cached world built by other code")
    args = parser.parse_args(argv)
    if args.mode == "catalogue":
        if args.items < 10:
            parser.error(f"--items {args.items}: a catalogue needs at least 10 items")
        return catalogue_main(args, argv)
    args.work_dir = args.work_dir or "/tmp/saviorrec-serving-bench"
    args.out = args.out or RESULTS


    work = Path(args.work_dir)
    stamp = source_stamp(WORLD_SOURCES)
    fresh, redis_server, cfg = open_world(work, stamp, args)
    server = None
    try:
        if fresh:
            print("building the world (Spark materialize, export) ...", flush=True)
            build(cfg, redis_server)
            (work / STAMP_FILE).write_text(stamp + "\n")
        port = free_port()
        server = start_server(cfg, work, port)
        url = f"http://127.0.0.1:{port}/rank"
        load: dict[str, Any] = {}
        for n in SIZES:
            count = args.requests if n == 200 else args.other_requests
            Load(url, request_bodies(n, 20, seed=99), args.concurrency).run()  # warm-up
            load[str(n)] = Load(url, request_bodies(n, count, seed=n), args.concurrency).run()
            print(f"{n} candidates: {load[str(n)]}", flush=True)
        cache = server_metrics(url.replace("/rank", "/metrics"))
        restart = restart_phase(url, redis_server, min(args.requests, 3000), args.concurrency)
        print(f"redis restart: {restart}", flush=True)
        floor = floors(cfg, args.floor_repeats)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        redis_server.stop()

    at200 = load["200"]
    targets = {
        "p99_200_candidates_le_40ms": at200["p99_ms"] is not None and at200["p99_ms"] <= 40.0,
        "zero_errors_at_200": at200["errors"] == 0,
        "model_500_lt_3x_50": floor["model_500_over_50"] < 3.0,  # as served (XLA, buckets)
        "restart_service_carries_on": restart["requests_after_restart"] > 0
        and restart["errors_after_restart"] == 0,
    }
    rows = [{"candidates": int(n), "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
             "req_per_s": r["requests_per_s"], "errors": r["errors"],
             "feast_read_p50": floor[n]["feast_sdk_read"]["p50_ms"],
             "direct_read_p50": floor[n]["direct_read"]["p50_ms"],
             "cached_read_p50": floor[n]["cached_read"]["p50_ms"],
             "model_p50": floor[n]["model_call"]["p50_ms"],
             "graph_p50": floor[n]["model_call_graph"]["p50_ms"]} for n, r in load.items()]
    print(format_table(rows, list(rows[0])))
    print(f"model 500/50: {floor['model_500_over_50']} (plain graph "
          f"{floor['model_graph_500_over_50']}); targets: {targets}")
    write_json_atomic(args.out, {
        **run_header([Path(__file__).name, *argv]),
        "device": device_info(),
        "versions": library_versions(("numpy", "tensorflow", "keras", "feast", "redis", "fastapi",
                                      "uvicorn", "httpx", "pydantic")),
        "redis_server": subprocess.run(["redis-server", "--version"], check=False, capture_output=True,
                                       text=True).stdout.strip(),
        "world": {"items": N_ITEMS, "users": N_USERS, "embedding_dim": cfg.encoder.dim,
                  "semantic_ids": cfg.rqvae.levels + 1, "sequence_length": cfg.sequences.max_len,
                  "variant": "full", "profile": "production (redis, password)",
                  "source_stamp": stamp},
        "serving": {k: getattr(cfg.serving, k)
                    for k in ("xla", "item_cache_ttl_s", "item_cache_items", "max_candidates",
                              "tf_threads")},
        "load": load, "server_item_cache_after_load": cache, "redis_restart": restart,
        "floors": floor, "targets": targets,
        "median_model_ms_by_candidates": {n: floor[n]["model_call"]["p50_ms"] for n in load},
        "note": "client threads, server and redis share the same 2 cores (others' jobs too). "
                "direct_read: the store without the item cache; cached_read: the service's "
                "read with a warm item cache (only the user's sequence from Redis). model_call: "
                "as served (XLA, candidates padded to model_rows); model_call_graph: the "
                "SavedModel's plain graph on the unpadded candidates.",
    })
    print(f"wrote {args.out}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
