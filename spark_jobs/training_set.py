"""The ranker's point-in-time training set on Spark: the production profile's builder.

The same rows as the local builder (``feature_repo.training``: duckdb and Feast's duckdb offline
store, in chunks on one process), built by one Spark job that scales out on the standalone
cluster. Per sample (user, item, label, t, split) of ``spark:samples``:

1. the candidate's item_stats as of t: the latest row of the item stamped <= t (a row stamped
   exactly t counts: it was computed from events strictly before t) and no older than the
   item_stats view's TTL (``feast.item_stats_ttl_days``); none -> ITEM_STAT_DEFAULTS;
2. the behaviour sequence and the user's statistics: the ``spark:sequences`` row of exactly
   (user, t); a sample without one, or with two, is an error (never a silently older sequence);
3. every sequence item's item_stats as of the same t, by the rule of 1: its row of the
   training set's statistics table (``seq_stats_row``, aligned with seq_item_ids;
   saviorrec.training_stats numbers the rows); padding positions and items without a row point
   at row 0, the defaults;
4. eval_pv_bucket: the candidate's ``spark:item_pv`` bucket, 0 when the item has none.

Engines. 2 and 4 are Spark SQL joins (2 an exact equi-join: Feast's point-in-time join would
silently take an older sequence row for a sample without its own). 1 and 3 are Feast's
point-in-time rule, but not through Feast's Spark offline store: its ``get_historical_features``
takes the entity rows as a pandas frame (or a SQL string), returns a frame the caller collects
on the driver, and runs a generic window over the union of entity and feature rows per request;
3 alone asks for samples x max_len (item, t) pairs (500M at 10M samples). A Spark SQL window per
item over stats rows and exploded (item, t) rows was exact too (tests/test_training_set_spark.py
ran against it) but ran at 936 samples/s on 100k samples (2 loaded cores): two shuffles of 50
rows per sample. Here item_stats (one row per item and snapshot, far smaller than the samples)
is collected once, sorted, and broadcast (:class:`StatsIndex`); every partition of the joined
samples then looks its candidates and sequence items up by vectorised binary search in Arrow
batches (``mapInArrow``): no shuffle of the pairs. The index is built from the statistics table
that the driver writes beside the splits (``lake.training_stats``), so index row r is table row
r + 1. Memory bound: each executor's Python worker
holds the index, 56 bytes per item_stats row and 24 per item (``item_stats_index_bytes``). The
executors run Python, so they need the project's environment (``PYSPARK_PYTHON``).

Output: ``lake.training_stats`` (TRAINING_STATS, written by the driver) and
``lake.training(split)`` for each split, a parquet folder in the TRAINING_SAMPLES contract
(written partitioned by split into a temporary folder of the training directory, each split then
renamed into place). The dense item table (TRAINING_ITEMS) is built from
item_multimodal by ``feature_repo.training.build_training_items`` with the item ids returned
here (every candidate's and sequence item's id is a samples item id); the pipeline joins the two
(``saviorrec.pipeline.run_training_set``).

    spark-submit spark_jobs/training_set.py --config FILE [--master spark://...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: import from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from saviorrec.config import Config, load_config
from saviorrec.lake import Lake, atomic_path, write_table
from saviorrec.schema import (
    ITEM_PV,
    ITEM_STAT_DEFAULTS,
    ITEM_STATS,
    PADDING_ITEM_ID,
    SAMPLES,
    SEQ_STATS_ROW,
    SEQUENCES,
    SPLITS,
    TRAINING_SAMPLES,
    TRAINING_STATS,
    USER_STAT_NUMERIC,
)
from saviorrec.training_stats import STATS, stats_table
from spark_jobs.session import session_scope
from spark_jobs.tables import conform, read_table

log = logging.getLogger(__name__)

SEQ_KEYS = ("user_id", "event_timestamp")
MICROS_PER_DAY = 86_400 * 1_000_000


def _type(name: str) -> str:
    """The Spark type of a statistic in the training set (TRAINING_SAMPLES): counts are floats."""
    return "bigint" if name == "pv_bucket" else "float"


def _numpy_type(name: str) -> type:
    return np.int64 if name == "pv_bucket" else np.float32


@dataclass(frozen=True)
class StatsIndex:
    """item_stats sorted by (item_id, event_timestamp): the as-of lookups of one process.

    ``rows_as_of`` is Feast's rule, vectorised: for each (item, t), the last row of the item
    stamped <= t (a row stamped exactly t counts), if stamped >= t - ttl; -1 where none. The
    item's rows are found by binary search over the sorted item ids, then a bisection over its
    timestamps runs for all queries at once (log2 of the item's row count numpy passes).
    """

    items: np.ndarray  # sorted unique item ids
    starts: np.ndarray  # first row of each of them
    ends: np.ndarray  # one past its last row
    micros: np.ndarray  # row timestamps, microseconds since the epoch (UTC)
    values: dict[str, np.ndarray]  # STATS by row

    @classmethod
    def from_arrow(cls, table: pa.Table) -> StatsIndex:
        item = table["item_id"].to_numpy()
        micros = table["event_timestamp"].cast(pa.int64()).to_numpy()
        order = np.lexsort((micros, item))
        items, starts, counts = np.unique(item[order], return_index=True, return_counts=True)
        return cls(items, starts, starts + counts, micros[order],
                   {n: table[n].to_numpy()[order] for n in STATS})

    @property
    def nbytes(self) -> int:
        arrays = (self.items, self.starts, self.ends, self.micros, *self.values.values())
        return sum(a.nbytes for a in arrays)

    def rows_as_of(self, item: np.ndarray, micros: np.ndarray, ttl_micros: int) -> np.ndarray:
        if not len(self.items) or not len(item):
            return np.full(len(item), -1, np.int64)
        at = np.minimum(np.searchsorted(self.items, item), len(self.items) - 1)
        known = self.items[at] == item
        first = np.where(known, self.starts[at], 0)
        lo, hi = first.copy(), np.where(known, self.ends[at], 0)
        while True:  # lo: the first row of the item stamped after t
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            right = active & (self.micros[np.minimum(mid, len(self.micros) - 1)] <= micros)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        row = lo - 1
        fresh = known & (row >= first)
        fresh &= micros - self.micros[np.maximum(row, 0)] <= ttl_micros
        return np.where(fresh, row, -1)

    def gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Statistic ``name`` of ``rows`` in its training-set dtype; the default where -1."""
        values = self.values[name][np.maximum(rows, 0)].astype(_numpy_type(name))
        values[rows < 0] = ITEM_STAT_DEFAULTS[name]
        return values


def add_stats(batch: pa.RecordBatch, index: StatsIndex, ttl_micros: int) -> pa.RecordBatch:
    """A batch of joined rows (sample, its sequence, user statistics, eval_pv_bucket) -> the
    TRAINING_SAMPLES columns and split: candidate STATS as of t, and the statistics-table row of
    every sequence position as of t (index row + 1; 0, the defaults, where -1 or padding)."""
    micros = batch["event_timestamp"].cast(pa.int64()).to_numpy()
    candidate = index.rows_as_of(batch["item_id"].to_numpy(), micros, ttl_micros)
    seq = batch["seq_item_ids"]
    offsets = seq.offsets.to_numpy()
    offsets = pa.array(offsets - offsets[0], pa.int32())
    flat = pc.list_flatten(seq).to_numpy()
    parent = pc.list_parent_indices(seq).to_numpy()
    rows = index.rows_as_of(flat, micros[parent], ttl_micros)
    rows[flat == PADDING_ITEM_ID] = -1
    columns = {name: batch[name] for name in batch.schema.names}
    columns |= {n: pa.array(index.gather(n, candidate)) for n in STATS}
    columns[SEQ_STATS_ROW] = pa.ListArray.from_arrays(offsets, pa.array((rows + 1).astype(np.int32)))
    return pa.RecordBatch.from_pydict({n: columns[n] for n in (*TRAINING_SAMPLES.names, "split")})


def joined_rows(samples: DataFrame, sequences: DataFrame, item_pv: DataFrame) -> DataFrame:
    """Each sample with its (user, t) sequences row (:func:`check_sequences`: exactly one), its
    user statistics as floats and its eval_pv_bucket (0 where the item has no item_pv row)."""
    buckets = item_pv.select("item_id", F.col("pv_bucket").alias("eval_pv_bucket"))
    return (samples.join(sequences, list(SEQ_KEYS), "inner")
            .join(F.broadcast(buckets), "item_id", "left")
            .select("user_id", "item_id", "label", "event_timestamp", "split",
                    F.coalesce("eval_pv_bucket", F.lit(0).cast("bigint")).alias("eval_pv_bucket"),
                    *(F.col(n).cast("float").alias(n) for n in USER_STAT_NUMERIC),
                    "seq_item_ids", "seq_len"))


def training_rows(spark: SparkSession, samples: DataFrame, sequences: DataFrame,
                  item_stats: DataFrame, item_pv: DataFrame, ttl_days: int,
                  partitions: int) -> tuple[DataFrame, pa.Table, StatsIndex]:
    """TRAINING_SAMPLES columns plus ``split``, in no particular order; the statistics table
    (TRAINING_STATS) their seq_stats_row point into; and the index used."""
    stats = stats_table(item_stats.toArrow())
    index = StatsIndex.from_arrow(stats.slice(1))  # sorted already: index row r = stats row r + 1
    # Broadcast plain arrays: a broadcast is pickled by reference to its class, and under
    # spark-submit this module is __main__, which executors cannot import by that name.
    shared = spark.sparkContext.broadcast({f.name: getattr(index, f.name) for f in fields(index)})
    ttl_micros = ttl_days * MICROS_PER_DAY

    def with_stats(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        local = StatsIndex(**shared.value)
        for batch in batches:
            yield add_stats(batch, local, ttl_micros)

    schema = f"{TRAINING_SAMPLES.spark_ddl()}, `split` STRING"
    # Spread the samples over spark.shuffle_partitions before the join: a small samples file is
    # one input split, and a join that Spark turns into a broadcast keeps that single partition
    # (measured: 100k samples in one task on local[2]). Repartitioning the joined rows instead
    # shuffles the sequences twice: 1M samples, join and write 232 / 172 s against 120 / 96 s
    # this way (two rounds each, alternated, local[2] under a load average of ~12;
    # benchmarks/results/training_set_spark_repartition_ab.json).
    joined = joined_rows(samples.repartition(partitions), sequences, item_pv)
    return joined.mapInArrow(with_stats, schema), stats, index


def check_sequences(samples: DataFrame, sequences: DataFrame) -> None:
    """Every sample's (user, t) has exactly one sequences row, or ValueError naming one.

    One aggregation (a Spark job) over the samples' distinct (user, t) and the sequences rows.
    """
    asked = samples.select(*SEQ_KEYS).distinct().select(
        *SEQ_KEYS, F.lit(1).alias("asked"), F.lit(0).alias("rows"))
    present = sequences.select(*SEQ_KEYS, F.lit(0).alias("asked"), F.lit(1).alias("rows"))
    per_key = asked.unionByName(present).groupBy(*SEQ_KEYS).agg(
        F.max("asked").alias("asked"), F.sum("rows").alias("rows")).filter("asked = 1")
    key = F.struct(*SEQ_KEYS)
    found = per_key.agg(
        F.sum((F.col("rows") == 0).cast("bigint")).alias("missing"),
        F.min(F.when(F.col("rows") == 0, key)).alias("first_missing"),
        F.min(F.when(F.col("rows") > 1, F.struct("rows", *SEQ_KEYS))).alias("first_duplicate"),
    ).collect()[0]
    if found["first_duplicate"] is not None:
        dup = found["first_duplicate"]
        raise ValueError(f"sequences has {dup['rows']} rows for user_id={dup['user_id']} "
                         f"at {dup['event_timestamp']} (re-run the sequences job)")
    if found["missing"]:
        first = found["first_missing"]
        raise ValueError(f"sequences has no row for the samples of {found['missing']} "
                         f"(user, time), e.g. user_id={first['user_id']} at "
                         f"{first['event_timestamp']} (re-run the sequences job)")


def fingerprints(rows: DataFrame) -> dict[str, tuple[int, int]]:
    """(rows, sum of a hash of (user, item, t, label)) per split: equal for the samples and the
    rows written exactly when no sample was lost or doubled (one aggregation, no shuffle of
    rows; a sum, so row order does not matter; decimal, so it cannot overflow)."""
    key = F.xxhash64("user_id", "item_id", "event_timestamp", "label").cast("decimal(38,0)")
    found = rows.groupBy("split").agg(F.count("*").alias("n"), F.sum(key).alias("h")).collect()
    return {r["split"]: (int(r["n"]), int(r["h"])) for r in found}


def _write_splits(table: DataFrame, lake: Lake, stats: pa.Table,
                  expected: dict[str, tuple[int, int]], diagnose: Callable[[], None]) -> dict[str, int]:
    """Write ``table`` (TRAINING_SAMPLES + split) partitioned by split; check that its rows are
    the samples' (``expected``: :func:`fingerprints`), else ``diagnose()`` names the cause; then
    write ``stats`` and rename each split into place. A failed check moves nothing into place."""
    lake.training_dir.mkdir(parents=True, exist_ok=True)
    staging = lake.training_dir / f".spark-{uuid.uuid4().hex[:8]}"
    try:
        table.write.mode("error").partitionBy("split").parquet(str(staging))
        unknown = sorted(p.name for p in staging.glob("split=*")
                         if p.name.removeprefix("split=") not in SPLITS)
        if unknown:
            raise ValueError(f"samples: unknown split {unknown[0]!r} (expected one of {SPLITS})")
        spark = table.sparkSession
        written = fingerprints(spark.read.parquet(str(staging)))
        if written != expected:
            diagnose()  # raises, naming a sample without its sequence row or with two
            raise RuntimeError(f"the training set's rows differ from the samples' (rows, key "
                               f"hash) per split: {written} against {expected}")
        write_table(stats, lake.training_stats, TRAINING_STATS)
        rows = {}
        for split in SPLITS:
            part = staging / f"split={split}"
            with atomic_path(lake.training(split)) as tmp:
                if part.is_dir():
                    os.replace(part, tmp)
                else:  # no sample in this split: an empty table, still in the contract
                    tmp.mkdir()
                    pq.write_table(TRAINING_SAMPLES.arrow_schema().empty_table(),
                                   tmp / "part-00000.parquet")
            rows[split] = written.get(split, (0, 0))[0]
        return rows
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Write the training set of ``cfg``'s lake; return rows per split and the samples' item ids.

    Every sample must have exactly one sequences row of its (user, t): checked by comparing
    the rows written with the samples (:func:`fingerprints`), the cheap pass;
    :func:`check_sequences` (a shuffle of every (user, t)) runs only to name the cause when
    they differ."""
    lake = Lake.from_config(cfg)
    samples = read_table(spark, lake.spark("samples"), SAMPLES).select(
        "user_id", "item_id", "label", "event_timestamp", "split")
    sequences = read_table(spark, lake.spark("sequences"), SEQUENCES)
    item_stats = read_table(spark, lake.spark("item_stats"), ITEM_STATS)
    item_pv = read_table(spark, lake.spark("item_pv"), ITEM_PV)
    began = time.perf_counter()
    expected = fingerprints(samples)
    check_s = time.perf_counter() - began
    rows, stats, index = training_rows(spark, samples, sequences, item_stats, item_pv,
                                       cfg.feast.item_stats_ttl_days, cfg.spark.shuffle_partitions)
    written = _write_splits(conform(rows, TRAINING_SAMPLES, keep=("split",)), lake, stats,
                            expected, lambda: check_sequences(samples, sequences))
    write_s = time.perf_counter() - began - check_s
    seen = [r[0] for r in samples.select("item_id").distinct().collect()]
    return {"engine": "spark", "master": spark.sparkContext.master, "rows": written,
            "item_stats_rows": len(index.micros), "item_stats_index_bytes": index.nbytes,
            "seen_items": seen,
            "seconds": {"count_samples": round(check_s, 2), "join_and_write": round(write_s, 2)}}


def run(cfg: Config, master: str | None = None) -> dict[str, Any]:
    """Build the training set on ``master`` (default: spark-submit's, else ``cfg.spark.master``)."""
    started = time.perf_counter()
    with session_scope(cfg.spark, master) as spark:
        result = build(spark, cfg)
    result["seconds"]["total_incl_startup"] = round(time.perf_counter() - started, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    """``spark-submit spark_jobs/training_set.py --config FILE [--master URL]``: JSON on stdout
    (the item ids are left out: the stage uses them for the item table)."""
    parser = argparse.ArgumentParser(prog="spark_jobs/training_set.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config of the run")
    parser.add_argument("--master", default=None, help="Spark master URL (default: config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(load_config(args.config), master=args.master)
    result["seen_items"] = len(result["seen_items"])
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
