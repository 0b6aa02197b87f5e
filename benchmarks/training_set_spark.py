"""The training set on Spark against the local builder: samples/s, bytes/sample, same values.

For each lake: the local builder (feature_repo.training.write_training_samples: duckdb + Feast's
duckdb offline store, the local profile's) and the Spark builder (spark_jobs/training_set.py,
the production profile's, on --master) write the training set of the same inputs; each split
is compared by value (benchmarks._bench_common.table_differences: sorted, column by column,
floats within 1e-6), and both are timed. Spark's figure excludes the session's start-up (given
beside it); the local builder's excludes Feast's apply. Bytes per sample: the parquet files
on disk (compressed) and the rows in memory (arrow), the layout question of issue 25 item 2.

Lakes (inputs copied into a temporary folder; the source runs are only read):
  quick        runs/movielens-quick (the MovieLens quick subsample's Spark outputs)
  run:DIR      the Spark outputs of another run folder, e.g. run:runs/synthetic-1m
  synth:N      N synthetic samples, one per (user, time), random sequences of 50
               (benchmarks/feature_serving.py's world: the issue's 3,900 samples/s figure)

    .venv/bin/python benchmarks/training_set_spark.py --lakes quick,synth:100k

Writes benchmarks/results/training_set_spark.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    REPO_ROOT,
    device_info,
    ensure_repo_on_path,
    library_versions,
    run_header,
    table_differences,
    write_json_atomic,
)

ensure_repo_on_path()

import numpy as np
import pyarrow.parquet as pq

from feature_repo import store as fs
from feature_repo.training import write_training_samples
from saviorrec.config import Config, load_config
from saviorrec.lake import Lake
from saviorrec.schema import SPLITS
from spark_jobs import training_set as spark_training

INPUTS = ("samples", "sequences", "item_stats", "item_pv")
SORT_KEYS = ("user_id", "item_id", "event_timestamp", "label")
TARGET_SAMPLES_PER_S = 50_000  # issue 25: at 10M events on the 2 cores


def parse_lake(text: str) -> tuple[str, str]:
    kind, _, arg = text.strip().partition(":")
    if kind == "quick":
        return "quick", str(REPO_ROOT / "runs" / "movielens-quick")
    if kind == "run":
        return f"run:{Path(arg).name}", str(REPO_ROOT / arg)
    if kind == "synth":
        scale = {"k": 1_000, "M": 1_000_000}.get(arg[-1], 1)
        return f"synth:{arg}", str(int(float(arg.rstrip("kM")) * scale))
    raise ValueError(f"lake {text!r}: expected quick, run:DIR or synth:N")


def prepare_inputs(name: str, source: str, cfg: Config) -> int:
    """Write the lake's inputs into cfg's run folder; return its number of samples."""
    lake = Lake.from_config(cfg)
    if name.startswith("synth:"):
        from feature_serving import write_training_inputs

        n = int(source)
        return write_training_inputs(cfg, n, n_items=max(1_000, n // 10),
                                     n_users=max(1_000, n // 20), rng=np.random.default_rng(0))
    for table in INPUTS:
        folder = Path(source) / "lake" / "spark" / table
        if not folder.is_dir():
            raise FileNotFoundError(f"{name}: {folder} does not exist")
        shutil.copytree(folder, lake.spark(table))
    return pq.ParquetDataset(lake.spark("samples")).read(columns=["label"]).num_rows


def folder_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()
                                           and not f.name.startswith((".", "_"))]
    return sum(f.stat().st_size for f in files)


def bench_lake(name: str, source: str, root: Path, master: str, shuffle: int) -> dict[str, Any]:
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(root / name.replace(":", "-"))},
        spark={"master": master, "driver_memory": "3g", "shuffle_partitions": shuffle})
    lake = Lake.from_config(cfg)
    samples = prepare_inputs(name, source, cfg)
    fs.apply(cfg)
    print(f"== {name}: {samples:,} samples, local builder", file=sys.stderr, flush=True)
    began = time.perf_counter()
    local_report = write_training_samples(cfg)
    local_s = time.perf_counter() - began
    local = {s: pq.read_table(lake.training(s)) for s in SPLITS}
    local_stats = pq.read_table(lake.training_stats)
    # Bytes of a training set: its splits and the statistics table they point into.
    local_bytes = sum(folder_bytes(lake.training(s)) for s in SPLITS) + \
        folder_bytes(lake.training_stats)
    print(f"== {name}: Spark builder on {master}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    spark_report = spark_training.run(cfg)
    spark_total_s = time.perf_counter() - began
    spark_s = spark_report["seconds"]["count_samples"] + spark_report["seconds"]["join_and_write"]
    spark_bytes = sum(folder_bytes(lake.training(s)) for s in SPLITS) + \
        folder_bytes(lake.training_stats)
    agree = {s: table_differences(pq.read_table(lake.training(s)), local[s], SORT_KEYS)
             for s in SPLITS}
    stats_equal = pq.read_table(lake.training_stats).equals(local_stats)
    return {
        "lake": name, "source": source if not name.startswith("synth:") else "synthetic",
        "samples": samples,
        "local": {"seconds": round(local_s, 2), "samples_per_s": round(samples / local_s),
                  "stage_seconds": local_report["seconds"],
                  "sequence_stats_join": local_report["sequence_stats_join"],
                  "bytes_per_sample": round(local_bytes / samples),
                  "arrow_bytes_per_sample": round(
                      (sum(t.nbytes for t in local.values()) + local_stats.nbytes) / samples),
                  "stats_rows": local_stats.num_rows},
        "spark": {"master": spark_report["master"], "seconds": round(spark_s, 2),
                  "samples_per_s": round(samples / spark_s),
                  "seconds_incl_session_start": round(spark_total_s, 2),
                  "samples_per_s_incl_session_start": round(samples / spark_total_s),
                  "job_seconds": spark_report["seconds"], "rows": spark_report["rows"],
                  "bytes_per_sample": round(spark_bytes / samples),
                  "output_files": sum(len(list(lake.training(s).glob("*.parquet")))
                                      for s in SPLITS)},
        "spark_over_local_speed": round(local_s / spark_s, 2),
        "engines_agree": stats_equal and all(d["equal"] for d in agree.values()),
        "stats_tables_equal": stats_equal,
        "value_comparison": {s: {"rows": d["rows"], "differing_columns": d["columns"]}
                             for s, d in agree.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lakes", default="quick", help="comma list: quick, run:DIR, synth:N")
    parser.add_argument("--master", default="local[2]", help="Spark master (local[2]: 2 cores)")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"
                                             / "training_set_spark.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="saviorrec-ts-") as tmp:
        for text in args.lakes.split(","):
            name, source = parse_lake(text)
            results.append(bench_lake(name, source, Path(tmp), args.master,
                                      args.shuffle_partitions))
            print(results[-1], file=sys.stderr, flush=True)
    payload = {
        **run_header(sys.argv if argv is None else ["benchmarks/training_set_spark.py", *argv]),
        "device": device_info(), "load_average_at_end": os.getloadavg(),
        "versions": library_versions(("pyspark", "duckdb", "feast", "pyarrow", "numpy")),
        "note": args.note,
        "target": {"samples_per_s": TARGET_SAMPLES_PER_S, "at": "10M events, 2 cores"},
        "results": results,
    }
    write_json_atomic(Path(args.out), payload)
    print(Path(args.out).read_text())
    return 0 if all(r["engines_agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
