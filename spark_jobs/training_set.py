"""The ranker's point-in-time training set on Spark: the production profile's builder.

The same rows as the local builder (``feature_repo.training``, duckdb and Feast's duckdb
offline store, in chunks on one process), computed as one Spark plan that scales out on the
standalone cluster. Per sample (user, item, label, t, split) of ``spark:samples``:

1. the candidate's item_stats as of t: the latest row of the item stamped <= t (a row stamped
   exactly t counts: it was computed from events strictly before t) and no older than the
   item_stats view's TTL (``feast.item_stats_ttl_days``); none -> ITEM_STAT_DEFAULTS;
2. the behaviour sequence and the user's statistics: the ``spark:sequences`` row of exactly
   (user, t); a sample without one, or with two, is an error (never a silently older sequence);
3. every sequence item's item_stats as of the same t, by the rule of 1, as lists aligned with
   seq_item_ids; padding positions and items without a row get the defaults;
4. eval_pv_bucket: the candidate's ``spark:item_pv`` bucket, 0 when the item has none.

Why Spark SQL and not Feast's Spark offline store. Feast's Spark store has the same point-in-time
rule (feature_ts <= entity_ts and >= entity_ts - ttl), so it would be exact for 1, but not usable
at this size: its ``get_historical_features`` takes the entity rows as a pandas frame (or a SQL
string) and hands back a frame that the caller collects on the driver (``to_arrow``), and its
query is a generic window over the union of entity and feature rows per request. Step 3 asks for
samples x max_len (item, t) pairs: 500M at 10M samples. Here every step is a join or a window
in one plan that never leaves the executors, and the result is written by them straight into
the lake. The point-in-time rule is written once (:func:`stats_as_of`) and used for 1 and 3.
Step 2 is an exact equi-join, which Feast's point-in-time join is not (it would silently take an
older sequence row for a sample without its own).

Samples of one user at one time share their sequence, so step 3 runs once per distinct
(user, t). Each as-of join is one window per item over its stats rows and the rows asking
(samples for 1, exploded sequence positions for 3), which carry their own columns through it:
no join back.

Output: ``lake.training(split)`` for each split, a parquet folder in the TRAINING_SAMPLES
contract (written partitioned by split into a temporary folder of the training directory, each
split then renamed into place). The dense item table (TRAINING_ITEMS) is built from
item_multimodal by ``feature_repo.training.build_training_items`` with the item ids returned
here (every candidate's and sequence item's id is a samples item id).

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
from typing import Any

import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from saviorrec.config import Config, load_config
from saviorrec.lake import Lake, atomic_path
from saviorrec.schema import (
    ITEM_PV,
    ITEM_STAT_DEFAULTS,
    ITEM_STAT_NUMERIC,
    ITEM_STATS,
    PADDING_ITEM_ID,
    SAMPLES,
    SEQ_STAT_PREFIX,
    SEQUENCES,
    SPLITS,
    TRAINING_SAMPLES,
)
from spark_jobs.session import session_scope
from spark_jobs.tables import conform, read_table

log = logging.getLogger(__name__)

STATS: tuple[str, ...] = (*ITEM_STAT_NUMERIC, "pv_bucket")
KEYS = ("item_id", "event_timestamp")
SEQ_KEYS = ("user_id", "event_timestamp")
MICROS_PER_DAY = 86_400 * 1_000_000


def _type(name: str) -> str:
    """The Spark type of a statistic in the training set (TRAINING_SAMPLES): counts are floats."""
    return "bigint" if name == "pv_bucket" else "float"


def _default(name: str) -> Column:
    return F.lit(ITEM_STAT_DEFAULTS[name]).cast(_type(name))


def stats_as_of(keys: DataFrame, item_stats: DataFrame, ttl_days: int) -> DataFrame:
    """Rows of ``keys`` (item_id, event_timestamp, any other columns) with STATS as of their
    event_timestamp, null where none.

    Feast's rule: the latest row of the item stamped <= t, if stamped >= t - ttl. One window per
    item over its stats rows and the keys in time order (a stats row sorts before a key at the
    same instant, so a row stamped exactly t counts); each key takes the last stats row before
    it. Keys carry their other columns through the window, so nothing is joined back.
    """
    row = F.struct(F.col("event_timestamp").alias("stats_ts"), *STATS)
    stats = item_stats.select(*KEYS, F.lit(0).alias("is_key"), row.alias("row"))
    asked = keys.withColumn("is_key", F.lit(1))
    upto = (Window.partitionBy("item_id").orderBy("event_timestamp", "is_key")
            .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    found = (stats.unionByName(asked, allowMissingColumns=True)
             .withColumn("asof", F.last("row", ignorenulls=True).over(upto))
             .filter(F.col("is_key") == 1))
    age = F.unix_micros(F.col("event_timestamp")) - F.unix_micros(F.col("asof.stats_ts"))
    fresh = age <= F.lit(ttl_days * MICROS_PER_DAY)
    return found.select(*keys.columns, *(F.when(fresh, F.col("asof")[n]).alias(n) for n in STATS))


def _filled(name: str) -> Column:
    """Column ``name`` in its training-set type, the default where null (no stats row)."""
    return F.coalesce(F.col(name).cast(_type(name)),
                      _default(name)).alias(name)


def candidate_stats(samples: DataFrame, item_stats: DataFrame, ttl_days: int) -> DataFrame:
    """Samples with the candidate's STATS as of the sample time (defaults where none)."""
    return stats_as_of(samples, item_stats, ttl_days).select(
        *samples.columns, *(_filled(n) for n in STATS))


def sequence_rows(samples: DataFrame, sequences: DataFrame) -> DataFrame:
    """The sequences row of each distinct (user, t) of samples (:func:`check_sequences`: one)."""
    return samples.select(*SEQ_KEYS).distinct().join(sequences, list(SEQ_KEYS), "inner")


def sequence_stats(rows: DataFrame, item_stats: DataFrame, ttl_days: int) -> DataFrame:
    """(user, t) sequence rows -> + seq_<stat> lists aligned with seq_item_ids, as of t."""
    exploded = rows.select(*SEQ_KEYS, F.posexplode("seq_item_ids").alias("pos", "item_id")) \
        .filter(F.col("item_id") != PADDING_ITEM_ID)
    by_pos = stats_as_of(exploded, item_stats, ttl_days).groupBy(*SEQ_KEYS).agg(
        F.map_from_entries(F.collect_list(F.struct("pos", F.struct(*STATS)))).alias("by_pos"))

    def aligned(name: str) -> Column:
        # when/otherwise, not coalesce: Spark would mark coalesce(x, literal) elements non-null,
        # and list<float not null> is not the contract's list<float32> for pyarrow readers.
        return F.transform("seq_item_ids", lambda _id, i: F.when(
            F.try_element_at(F.col("by_pos"), i)[name].isNull(), _default(name)
        ).otherwise(F.try_element_at(F.col("by_pos"), i)[name].cast(_type(name))))

    return rows.join(by_pos, list(SEQ_KEYS), "left").select(
        *rows.columns, *(aligned(n).alias(SEQ_STAT_PREFIX + n) for n in STATS))


def training_rows(samples: DataFrame, sequences: DataFrame, item_stats: DataFrame,
                  item_pv: DataFrame, ttl_days: int) -> DataFrame:
    """TRAINING_SAMPLES columns plus ``split``, in no particular order."""
    seq = sequence_rows(samples, sequences).transform(
        lambda rows: sequence_stats(rows, item_stats, ttl_days))
    buckets = item_pv.select("item_id", F.col("pv_bucket").alias("eval_pv_bucket"))
    return (samples.transform(lambda s: candidate_stats(s, item_stats, ttl_days))
            .join(seq, list(SEQ_KEYS), "left")
            .join(F.broadcast(buckets), "item_id", "left")
            .withColumn("eval_pv_bucket", F.coalesce("eval_pv_bucket", F.lit(0).cast("bigint"))))


def check_sequences(samples: DataFrame, sequences: DataFrame) -> dict[str, int]:
    """Every sample's (user, t) has exactly one sequences row, or ValueError naming one."""
    counts = sequences.groupBy(*SEQ_KEYS).count()
    dup = counts.filter(F.col("count") > 1).limit(1).collect()
    if dup:
        raise ValueError(f"sequences has {dup[0]['count']} rows for user_id={dup[0]['user_id']} "
                         f"at {dup[0]['event_timestamp']} (re-run the sequences job)")
    missing = samples.select(*SEQ_KEYS).distinct().join(counts, list(SEQ_KEYS), "left_anti")
    first = missing.limit(1).collect()
    if first:
        n = missing.count()
        raise ValueError(f"sequences has no row for the samples of {n} (user, time), e.g. "
                         f"user_id={first[0]['user_id']} at {first[0]['event_timestamp']} "
                         "(re-run the sequences job)")
    return {"sequence_rows": counts.count()}


def _write_splits(table: DataFrame, lake: Lake) -> dict[str, int]:
    """Write ``table`` (TRAINING_SAMPLES + split) partitioned by split, rename each into place."""
    lake.training_dir.mkdir(parents=True, exist_ok=True)
    staging = lake.training_dir / f".spark-{uuid.uuid4().hex[:8]}"
    try:
        table.write.mode("error").partitionBy("split").parquet(str(staging))
        unknown = sorted(p.name for p in staging.glob("split=*")
                         if p.name.removeprefix("split=") not in SPLITS)
        if unknown:
            raise ValueError(f"samples: unknown split {unknown[0]!r} (expected one of {SPLITS})")
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
            rows[split] = pq.ParquetDataset(lake.training(split)).read(
                columns=["label"]).num_rows
        return rows
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Write the training set of ``cfg``'s lake; return rows per split and the samples' item ids."""
    lake = Lake.from_config(cfg)
    samples = read_table(spark, lake.spark("samples"), SAMPLES).select(
        "user_id", "item_id", "label", "event_timestamp", "split")
    sequences = read_table(spark, lake.spark("sequences"), SEQUENCES)
    item_stats = read_table(spark, lake.spark("item_stats"), ITEM_STATS)
    item_pv = read_table(spark, lake.spark("item_pv"), ITEM_PV)
    began = time.perf_counter()
    checked = check_sequences(samples, sequences)
    check_s = time.perf_counter() - began
    rows = training_rows(samples, sequences, item_stats, item_pv, cfg.feast.item_stats_ttl_days)
    written = _write_splits(conform(rows, TRAINING_SAMPLES, keep=("split",)), lake)
    write_s = time.perf_counter() - began - check_s
    seen = [r[0] for r in samples.select("item_id").distinct().collect()]
    return {"engine": "spark", "master": spark.sparkContext.master, "rows": written,
            **checked, "seen_items": seen,
            "seconds": {"check_sequences": round(check_s, 2), "join_and_write": round(write_s, 2)}}


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
