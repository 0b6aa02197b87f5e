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
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    REPO_ROOT,
    device_info,
    ensure_repo_on_path,
    format_table,
    library_versions,
    run_header,
    source_stamp,
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


def start_server(cfg: Any, work: Path, port: int) -> subprocess.Popen[bytes]:
    import httpx
    import yaml

    config_path = work / "serving.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "saviorrec.cli", "serve", "--config",
                             str(config_path), "--port", str(port)],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: see {work / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server not ready within 180 s")


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="/tmp/saviorrec-serving-bench")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--requests", type=int, default=10_000, help="at 200 candidates")
    parser.add_argument("--other-requests", type=int, default=1_000, help="at 1, 50, 500")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--floor-repeats", type=int, default=100)
    parser.add_argument("--tf-threads", type=int, default=None,
                        help="serving.tf_threads of the measured server (default: the config's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = parser.parse_args(argv)

    from conftest import RedisServer

    work = Path(args.work_dir)
    stamp = source_stamp(WORLD_SOURCES)
    stale = stale_world(work, stamp)
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
