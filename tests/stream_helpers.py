"""What the streaming job's two test modules share (tests/test_stream_stats.py: item statistics;
tests/test_stream_user_rows.py: user rows), so that neither imports the other: the clock, event
files and the config, and the batch job's serving user rows that the stream's must equal."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from test_feast_lake import small_config

from saviorrec.config import Config
from saviorrec.schema import EVENTS, SEQUENCES, Table
from spark_jobs.samples import with_label
from spark_jobs.sequences import sequences

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """``day`` days (and the rest) after 2020-01-01 UTC."""
    return T0 + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def write_events(path: Path, rows: list[tuple], *, nullable: bool = False) -> Path:
    """One event file, dropped whole (written under a dot name, then renamed)."""
    schema = EVENTS.arrow_schema()
    if nullable:  # a writer that lets nulls in
        schema = pa.schema([f.with_nullable(True) for f in schema])
    table = pa.Table.from_pylist(
        [dict(zip(EVENTS.names, r, strict=True)) for r in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, coerce_timestamps="us")
    os.replace(tmp, path)
    return path


def stream_config(config: Config, **stats: object) -> Config:
    return small_config(config).with_overrides(
        stats={"recent_window_days": 2, **stats}, stream={"max_files_per_trigger": 1},
        spark={"shuffle_partitions": 2})


def batch_serving_rows(spark: SparkSession, cfg: Config, rows: list[tuple]) -> pd.DataFrame:
    """The batch job over ``rows``; each user's serving row (their latest), normalised."""
    events = spark.createDataFrame(rows, EVENTS.spark_ddl()).transform(
        with_label, cfg.labels.click_threshold).select(
        "user_id", "item_id", "label", "event_timestamp")
    out = sequences(events, cfg.sequences.max_len, cfg.stats.ctr_prior,
                    cfg.stats.ctr_prior_strength).toPandas()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    return normalise_user_rows(out.sort_values("event_timestamp").groupby("user_id").tail(1))


def normalise_rows(frame: pd.DataFrame, schema: Table, key: str) -> pd.DataFrame:
    """``schema``'s columns with its dtypes, UTC timestamps, sorted by ``key``."""
    frame = frame[schema.names].copy()
    for c in schema.columns:
        if c.dtype in ("int64", "float32"):
            frame[c.name] = frame[c.name].astype(c.dtype)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.sort_values(key).reset_index(drop=True)


def normalise_user_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """SEQUENCES rows as :func:`normalise_rows` makes them, ids as lists of ints."""
    frame = normalise_rows(frame, SEQUENCES, "user_id")
    frame["seq_item_ids"] = [[int(i) for i in ids] for ids in frame["seq_item_ids"]]
    return frame
