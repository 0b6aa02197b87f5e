"""Feature serving benchmark: Feast online reads from Redis, historical retrieval, sequence stats.

    .venv/bin/python benchmarks/feature_serving.py [--samples 1000000] [--reads 300]

1. Online (after Spark has stopped): p50/p99 of one ``online_features`` call (1 user + 200 candidates, plus the user's
   sequence items) from a real redis-server through Feast, and the same keys read directly with
   redis-py pipelines in the same process (the floor: two round trips, no decoding).
2. Historical: rows/s of ``get_historical_features`` (item_stats point-in-time) on --samples
   entity rows, duckdb (local profile) and Spark local[2] (production profile).
3. Sequence stats: (item, time) pairs of --seq-samples samples x 50 positions through duckdb
   ASOF JOIN vs Feast get_historical_features (duckdb): the choice in feature_repo/training.py;
   and the whole local ``training_set`` on those samples.
Synthetic tables in the lake schemas; prints and writes benchmarks/results/feature_serving.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from feature_repo import store as fs
from feature_repo.online import ITEM_REFS
from feature_repo.sequence_stats import STAT_REFS, pair_stats_asof, pair_stats_feast
from saviorrec.config import Config, load_config
from saviorrec.lake import Lake
from saviorrec.schema import ITEM_MULTIMODAL, ITEM_PV, ITEM_STATS, SAMPLES, SEQUENCES

T0 = pd.Timestamp("2020-01-01", tz="UTC")
DAYS = 60
SEQ = 50


def _folder(table: pa.Table, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-00000.parquet", coerce_timestamps="us")


def write_synthetic_lake(cfg: Config, n_items: int, n_users: int, rng: np.random.Generator) -> None:
    """item_stats: a row every 3 days per item; one multimodal row per item; one sequence/user."""
    lake = Lake.from_config(cfg)
    items = np.repeat(np.arange(1, n_items + 1), DAYS // 3)
    days = np.tile(np.arange(0, DAYS, 3), n_items)
    pv = rng.integers(0, 500, len(items))
    stats = {"item_id": items, "event_timestamp": T0 + pd.to_timedelta(days, "D"), "pv": pv,
             "clicks": pv // 3, "ctr": rng.random(len(items), np.float32), "pv_recent": pv // 2,
             "clicks_recent": pv // 6, "ctr_recent": rng.random(len(items), np.float32),
             "pv_bucket": np.minimum(pv // 100, 4)}
    _folder(pa.table(stats, schema=ITEM_STATS.arrow_schema()), lake.spark("item_stats"))
    d, levels = cfg.encoder.dim, cfg.rqvae.levels + 1
    mm = {"item_id": np.arange(1, n_items + 1),
          "embedding": list(rng.standard_normal((n_items, d), np.float32)),
          "semantic_ids": list(rng.integers(0, cfg.rqvae.codebook_size, (n_items, levels))),
          "encoder_version": ["bench"] * n_items, "rqvae_version": ["bench"] * n_items,
          "event_timestamp": [T0] * n_items}
    lake.item_multimodal.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(mm, schema=ITEM_MULTIMODAL.arrow_schema()), lake.item_multimodal)
    seqs = {"user_id": np.arange(1, n_users + 1),
            "event_timestamp": [T0 + pd.Timedelta(days=DAYS)] * n_users,
            "seq_item_ids": list(rng.integers(1, n_items + 1, (n_users, SEQ))),
            "seq_len": np.full(n_users, SEQ), **user_stats(n_users, rng)}
    _folder(pa.table(seqs, schema=SEQUENCES.arrow_schema()), lake.spark("sequences"))


def user_stats(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random SEQUENCES user statistics: pv events, clicks <= pv, their smoothed rate."""
    pv = rng.integers(SEQ, 10 * SEQ, n)
    clicks = rng.integers(0, pv + 1)
    return {"user_pv": pv, "user_clicks": clicks,
            "user_ctr": ((clicks + 1) / (pv + 2)).astype(np.float32)}


def entity_frame(n: int, n_items: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": rng.integers(1, n_items + 1, n),
        "event_timestamp": (T0 + pd.to_timedelta(rng.integers(0, DAYS * 86_400, n), "s"))
        .astype("datetime64[us, UTC]")})  # the lake contract: microseconds


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(ms)}


def redis_floor(store: Any, user: int, items: list[int]) -> Callable[[], None]:
    """The same keys and fields as Feast reads, straight through redis-py pipelines."""
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    client = store._provider.online_store._get_client(store.config.online_store)
    project = store.config.project

    def key(name: str, value: int) -> bytes:
        return _redis_key(project, EntityKey(join_keys=[name], entity_values=[
            Value(int64_val=value)]), 3)

    seq_fields = [_mmh3(r) for r in ("user_sequence:seq_item_ids", "user_sequence:seq_len")]
    item_fields = [_mmh3(r) for r in ITEM_REFS] + [b"_ts:item_stats", b"_ts:item_multimodal"]

    def read() -> None:
        raw = client.hmget(key("user_id", user), seq_fields + [b"_ts:user_sequence"])
        assert raw[0] is not None
        pipe = client.pipeline(transaction=False)
        for item in items:
            pipe.hmget(key("item_id", item), item_fields)
        pipe.execute()

    return read


def materialize_online(cfg: Config) -> float:
    fs.apply(cfg)
    began = time.perf_counter()
    fs.materialize(cfg, "2020-01-01", "2020-03-15")
    return round(time.perf_counter() - began, 2)


def bench_online(cfg: Config, n_items: int, n_users: int, reads: int,
                 rng: np.random.Generator) -> dict[str, Any]:
    """Feast and the floor alternate per request, so load on the machine hits both alike."""
    store = fs.get_store(cfg)
    feast_times, floor_times = [], []
    for i in range(reads + 10):
        user = int(rng.integers(1, n_users + 1))
        items = rng.integers(1, n_items + 1, 200).tolist()
        t = time.perf_counter()
        got = fs.online_features(store, user, items)
        t_feast = time.perf_counter() - t
        assert got.sequence.known and not got.missing
        seq_items = [x for x in got.sequence.item_ids if x]
        read = redis_floor(store, user, list(dict.fromkeys(items + seq_items)))
        t = time.perf_counter()
        read()
        t_floor = time.perf_counter() - t
        if i >= 10:  # warm-up
            feast_times.append(t_feast)
            floor_times.append(t_floor)
    return {"feast_online_features": percentiles(feast_times),
            "redis_pipeline_floor": percentiles(floor_times),
            "request": "1 user (sequence of 50) + 200 candidates: 2 round trips, <= 250 items"}


def bench_historical(cfg: Config, entity_df: pd.DataFrame) -> dict[str, Any]:
    store = fs.get_store(cfg)
    fs.apply(cfg)
    began = time.perf_counter()
    out = store.get_historical_features(entity_df=entity_df, features=STAT_REFS).to_arrow()
    seconds = time.perf_counter() - began
    assert out.num_rows == len(entity_df), (out.num_rows, len(entity_df))
    return {"rows": len(entity_df), "seconds": round(seconds, 2),
            "rows_per_s": round(len(entity_df) / seconds)}


def bench_sequence_stats(cfg: Config, n_samples: int, n_items: int,
                         rng: np.random.Generator) -> dict[str, Any]:
    """Pairs of n_samples x 50 positions, deduplicated, as training.py builds them."""
    pairs = entity_frame(n_samples * SEQ, n_items, rng).drop_duplicates(ignore_index=True)
    pairs.insert(0, "pair_id", np.arange(len(pairs), dtype=np.int64))
    table = pa.Table.from_pandas(pairs, preserve_index=False)
    store = fs.get_store(cfg)
    scan = f"read_parquet('{Lake.from_config(cfg).spark('item_stats')}/*.parquet')"
    ttl = store.get_feature_view("item_stats").ttl
    result: dict[str, Any] = {"samples": n_samples, "pairs": len(pairs)}
    for name, run in (("duckdb_asof", lambda: pair_stats_asof(table, scan, ttl)),
                      ("feast_get_historical_features_duckdb",
                       lambda: pair_stats_feast(table, store))):
        began = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - began
        assert out.num_rows == len(pairs)
        result[name] = {"seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds)}
    return result


def write_training_inputs(cfg: Config, n_samples: int, n_items: int, n_users: int,
                          rng: np.random.Generator) -> int:
    """The training set's inputs: n_samples (one per distinct user and time, so none shares a
    sequence) with random sequences of 50 over a synthetic lake. Returns the samples written."""
    write_synthetic_lake(cfg, n_items, n_users, rng)
    lake = Lake.from_config(cfg)
    samples = entity_frame(n_samples, n_items, rng)
    samples.insert(0, "user_id", rng.integers(1, n_users + 1, n_samples))
    samples = samples.drop_duplicates(["user_id", "event_timestamp"], ignore_index=True)
    n = len(samples)
    samples["label"] = rng.integers(0, 2, n)
    samples["rating"] = np.where(samples["label"] == 1, 4.0, 2.0).astype(np.float32)
    samples["split"] = rng.choice(["train", "valid", "test"], n, p=[0.7, 0.1, 0.2])
    _folder(pa.Table.from_pandas(samples, preserve_index=False).select(SAMPLES.names)
            .cast(SAMPLES.arrow_schema()), lake.spark("samples"))
    seqs = {"user_id": samples["user_id"], "event_timestamp": samples["event_timestamp"],
            "seq_item_ids": list(rng.integers(0, n_items + 1, (n, SEQ))),
            "seq_len": np.full(n, SEQ), **user_stats(n, rng)}
    _folder(pa.table(seqs, schema=SEQUENCES.arrow_schema()), lake.spark("sequences"))
    pv = {"item_id": np.arange(1, n_items + 1), "train_pv": rng.integers(0, 300, n_items)}
    pv["pv_bucket"] = np.minimum(pv["train_pv"] // 60, 4)
    _folder(pa.table(pv, schema=ITEM_PV.arrow_schema()), lake.spark("item_pv"))
    return n


def bench_training_set(cfg: Config, n_samples: int, n_items: int, n_users: int,
                       rng: np.random.Generator) -> dict[str, Any]:
    """The whole local training set: n_samples with sequences of 50, as the stage runs it."""
    n = write_training_inputs(cfg, n_samples, n_items, n_users, rng)
    fs.apply(cfg)
    began = time.perf_counter()
    report = fs.training_set(cfg)
    seconds = time.perf_counter() - began
    assert sum(report["samples_out"].values()) == n
    return {"samples": n, "sequence_length": SEQ, "seconds": round(seconds, 2),
            "samples_per_s": round(n / seconds), "stage_seconds": report["seconds"],
            "sequence_stats_join": report["sequence_stats_join"]}


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("redis-server did not start")


def environment() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    versions = {p: importlib.metadata.version(p) for p in
                ("feast", "redis", "duckdb", "pyspark", "pyarrow", "pandas")}
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=False).stdout
    return {"device": f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
                      "(shared machine)",
            "python": platform.python_version(), "versions": versions,
            "redis_server": redis_v.strip(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--seq-samples", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/feature_serving.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **environment()}
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
            run={"root": f"{tmp}/run"}, spark={"master": "local[2]", "driver_memory": "4g"})
        local = base.with_overrides(feast={"profile": "local"})
        prod = base.with_overrides(feast={"profile": "production"})
        write_synthetic_lake(local, args.items, args.users, rng)
        fs.apply(local)
        result["sequence_stats"] = bench_sequence_stats(local, args.seq_samples, args.items, rng)
        print(json.dumps(result["sequence_stats"]), flush=True)
        result["training_set_local"] = bench_training_set(
            local.with_overrides(run={"root": f"{tmp}/training"}), args.seq_samples, args.items,
            args.users, rng)
        print(json.dumps(result["training_set_local"]), flush=True)
        entity_df = entity_frame(args.samples, args.items, rng)
        result["historical"] = {"duckdb": bench_historical(local, entity_df)}
        print(json.dumps(result["historical"]), flush=True)
        proc, url = start_redis(Path(tmp))
        os.environ[prod.feast.redis_env] = url
        try:
            materialize_s = materialize_online(prod)  # Spark offline store -> Redis
            if not args.skip_spark:
                result["historical"]["spark_local2"] = bench_historical(prod, entity_df)
                print(json.dumps(result["historical"]), flush=True)
            from pyspark.sql import SparkSession
            if (spark := SparkSession.getActiveSession()) is not None:
                spark.stop()  # no JVM competing with the online reads
            result["online"] = {"materialize_seconds_spark_to_redis": materialize_s,
                                **bench_online(prod, args.items, args.users, args.reads, rng)}
            print(json.dumps(result["online"]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
