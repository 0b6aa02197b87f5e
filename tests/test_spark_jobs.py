"""The jobs end to end through run_jobs: contract, atomic replace on re-run, bad rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from saviorrec.config import Config
from saviorrec.lake import Lake, read_table, write_table
from saviorrec.schema import COCLICK, EVENTS, ITEM_PV, ITEM_STATS, ITEMS, SAMPLES, SEQUENCES
from spark_jobs.runner import run_jobs

T0 = datetime(2020, 1, 1, tzinfo=UTC)
OUTPUTS = {"samples": SAMPLES, "item_pv": ITEM_PV, "coclick": COCLICK, "item_stats": ITEM_STATS,
           "sequences": SEQUENCES}


def write_lake(cfg: Config, bad: bool) -> None:
    lake = Lake.from_config(cfg)
    items = pa.table({"item_id": pa.array(range(1, 6), pa.int64()),
                      "title": [f"item {i}" for i in range(1, 6)]})
    for column in ITEMS.names[2:]:
        items = items.append_column(column, pa.nulls(5, ITEMS.arrow_schema().field(column).type))
    write_table(items, lake.items, ITEMS)
    # users 1-3 each click items 1, 2, 3 a minute apart on day k, then view item 4 and 5
    rows = []
    for user in (1, 2, 3):
        for k, item in enumerate((1, 2, 3, 4, 5)):
            rows.append((user, item, 5.0 if item <= 3 else 2.0, T0 + timedelta(days=user, minutes=k)))
    if bad:
        rows += [(None, 1, 4.0, T0), (1, 99, 4.0, T0), (2, None, 4.0, T0)]
    columns = list(zip(*rows, strict=True))
    schema = pa.schema([pa.field(f.name, f.type, nullable=True) for f in EVENTS.arrow_schema()])
    table = pa.table([pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)
    lake.events.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, lake.events, coerce_timestamps="us")


@pytest.fixture()
def tiny(config: Config, spark: SparkSession) -> Config:
    cfg = config.with_overrides(data={"bad_rows": "skip"}, coclick={"min_support": 2})
    write_lake(cfg, bad=True)
    return cfg


def test_run_jobs_writes_contract_tables_and_replaces_them(tiny: Config) -> None:
    lake = Lake.from_config(tiny)
    first = run_jobs(tiny, ["sequences", "item_stats", "coclick", "samples"])  # any order
    assert list(first["jobs"]) == ["samples", "coclick", "item_stats", "sequences"]
    samples = first["jobs"]["samples"]
    assert samples["bad_rows"] == {"item_id not in items": 1, "null item_id": 1, "null user_id": 1}
    assert samples["rows"] == {"samples": 15, "item_pv": 5}
    # 5 events per user: floor(1.0) test, floor(0.5) valid
    assert samples["splits"] == {"test": 3, "train": 12}
    # every user co-clicks {1,2} {1,3} {2,3} in train (their item 5 view is test, item 4 no click)
    assert first["jobs"]["coclick"]["stats"]["n_pairs"] == 3
    assert first["jobs"]["coclick"]["rows"]["coclick"] == 6
    # item_stats: each item has one event day per user (3 days) -> day after each, and expiry
    assert first["jobs"]["item_stats"]["rows"]["item_stats"] == 5 * 6
    assert first["jobs"]["sequences"]["rows"]["sequences"] == 3 * 6
    counts = {}
    for name, table in OUTPUTS.items():
        counts[name] = read_table(lake.spark(name), table).num_rows  # the pyarrow contract
    assert counts == {"samples": 15, "item_pv": 5, "coclick": 6, "item_stats": 30, "sequences": 18}

    second = run_jobs(tiny, ["samples", "coclick", "item_stats", "sequences"])
    for name, table in OUTPUTS.items():
        assert read_table(lake.spark(name), table).num_rows == counts[name], name
    assert second["jobs"]["coclick"]["stats"] == first["jobs"]["coclick"]["stats"]
    leftovers = [p.name for p in lake.spark("samples").parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_item_stats_values_after_run(tiny: Config) -> None:
    run_jobs(tiny, ["samples", "item_stats"])
    rows = read_table(Lake.from_config(tiny).spark("item_stats"), ITEM_STATS).to_pylist()
    item1 = sorted((r["event_timestamp"], r["pv"], r["pv_recent"]) for r in rows if r["item_id"] == 1)
    jan, feb = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC))
    # clicks of item 1 on Jan 2, 3, 4 (one per user); a 30-day window keeps day d up to the row
    # of d + 30 and drops it on d + 31: Feb 2, 3, 4
    assert item1 == [(jan + timedelta(days=2), 1, 1), (jan + timedelta(days=3), 2, 2),
                     (jan + timedelta(days=4), 3, 3), (feb + timedelta(days=1), 3, 2),
                     (feb + timedelta(days=2), 3, 1), (feb + timedelta(days=3), 3, 0)]


def test_bad_rows_error_names_table_column_and_values(config: Config, spark: SparkSession) -> None:
    cfg = config.with_overrides(data={"bad_rows": "error"})
    write_lake(cfg, bad=True)
    with pytest.raises(ValueError, match=r"events: bad row \(user_id=None, item_id=1.*null user_id"):
        run_jobs(cfg, ["samples"])
    assert not Lake.from_config(cfg).spark("samples").exists()


def test_missing_input_names_the_stage(config: Config, spark: SparkSession) -> None:
    with pytest.raises(FileNotFoundError, match="samples: .* does not exist"):
        run_jobs(config, ["coclick"])


def test_unknown_job_is_refused(config: Config) -> None:
    with pytest.raises(ValueError, match="unknown Spark job"):
        run_jobs(config, ["samplez"])


def test_outputs_keep_microsecond_utc_timestamps(tiny: Config) -> None:
    run_jobs(tiny, ["samples"])
    path = next(Path(Lake.from_config(tiny).spark("samples")).glob("*.parquet"))
    assert pq.read_schema(path).field("event_timestamp").type == pa.timestamp("us", tz="UTC")
