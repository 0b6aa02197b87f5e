"""The Spark training-set builder (spark_jobs/training_set.py) on a real local SparkSession.

It must give the rows worked out by hand on point-in-time edge cases, and the same rows (by
value, column by column) as the local builder (feature_repo.training: duckdb and Feast's duckdb
offline store) on those cases and on a copy of the MovieLens quick run's lake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import load_benchmark
from test_feast_lake import SAMPLE_ROWS, SEQUENCE_ROWS, day, small_config, write_lake
from test_feast_store import DEFAULT, EXPECTED, ITEM1_D1, ITEM1_D3, ITEM2_D2, STATS
from test_spark_cluster import standalone  # noqa: F401 (a fixture)

from feature_repo import store as fs
from feature_repo.training import write_training_samples
from saviorrec.config import REPO_ROOT, Config, load_config
from saviorrec.lake import Lake
from saviorrec.pipeline import run_training_set
from saviorrec.schema import SPLITS, TRAINING_SAMPLES
from saviorrec.training_stats import expand
from spark_jobs import training_set as spark_training
from spark_jobs.standalone import SPARK_HOME, cluster_env
from spark_jobs.training_set import StatsIndex

SORT_KEYS = ("user_id", "item_id", "event_timestamp", "label")
bench = load_benchmark("_bench_common")

# Edge cases added to the Feast tests' hand lake (days from 2020-01-01):
# - user 13 at day 3 asks for item 1 like user 10 at day 3 (one (item, t), two users: a tie);
# - user 13's sequence holds item 2 at day 3 (item 2's first row is day 2: used) and item 1
#   (row stamped exactly day 3: used), then its sample at day 1.5 holds item 2, whose first row
#   is day 2 (a sequence item first seen after the sample: defaults);
# - user 14 samples item 2 exactly at its day-10 row, with an empty sequence.
EXTRA_SEQUENCES = [(13, 3, [0, 2, 1], 2), (13, 1.5, [0, 0, 2], 1), (14, 10, [0, 0, 0], 0)]
EXTRA_SAMPLES = [(13, 1, 0, 3, "train"), (13, 3, 1, 1.5, "valid"), (14, 2, 1, 10, "test")]
ITEM2_D10 = {"pv": 30, "clicks": 9, "ctr": 0.3, "pv_recent": 29, "clicks_recent": 9,
             "ctr_recent": 0.15, "pv_bucket": 3}
EXTRA_EXPECTED = {
    (13, 1, 3): (ITEM1_D3, [DEFAULT, ITEM2_D2, ITEM1_D3], 1),
    (13, 3, 1.5): (DEFAULT, [DEFAULT, DEFAULT, DEFAULT], 0),
    (14, 2, 10): (ITEM2_D10, [DEFAULT] * 3, 3),
}


def test_stats_index_finds_the_latest_row_at_or_before_t_within_the_ttl() -> None:
    us = 1_000_000
    # item 7: rows at 10 s, 20 s, 20 s + 1 us; item 3: one row at 5 s; given unsorted
    table = pa.table({
        "item_id": [7, 3, 7, 7], "event_timestamp": pa.array(
            [20 * us, 5 * us, 10 * us, 20 * us + 1], pa.timestamp("us", tz="UTC")),
        **{n: pa.array([2, 9, 1, 3], pa.int64()) for n in STATS}})
    index = StatsIndex.from_arrow(table)
    item = np.array([7, 7, 7, 7, 7, 3, 3, 5, 99], np.int64)
    t = np.array([9, 10, 19, 20, 21, 4, 100, 50, 50], np.int64) * us
    rows = index.rows_as_of(item, t, ttl_micros=10**12)
    # by hand: before the first row; exactly at it; between; exactly at 20 s (not 20 s + 1 us);
    # after the last; item 3 before / after its row; items without rows
    assert index.gather("pv", rows).tolist() == [0, 1, 1, 2, 3, 0, 9, 0, 0]
    assert index.gather("pv_bucket", rows).dtype == np.int64
    assert index.gather("ctr", rows).dtype == np.float32
    # a TTL of 1 s: item 7 at 21 s sees its 20 s + 1 us row (age < 1 s), item 3 at 100 s none;
    # at exactly the TTL the row still counts (10 s row at 11 s)
    rows = index.rows_as_of(np.array([7, 3, 7]), np.array([21 * us, 100 * us, 11 * us]), us)
    assert index.gather("pv", rows).tolist() == [3, 0, 1]
    empty = StatsIndex.from_arrow(table.slice(0, 0))
    assert empty.rows_as_of(item, t, us).tolist() == [-1] * len(item)


def read_splits(lake: Lake) -> dict[str, pa.Table]:
    """Every split as written, then seq_<stat> resolved from the statistics table (expand); the
    table itself under "stats"."""
    stats = pq.read_table(lake.training_stats)
    splits = {s: pq.read_table(lake.training(s)) for s in SPLITS}
    return {"stats": stats, **{s: expand(t, stats) for s, t in splits.items()}}


def rows_by_key(table: pa.Table) -> dict[tuple, dict]:
    t0 = day(0)
    return {(r["user_id"], r["item_id"], (r["event_timestamp"] - t0).total_seconds() / 86_400): r
            for r in table.to_pylist()}


def check_expected(tables: dict[str, pa.Table], expected: dict) -> None:
    rows = {}
    for split in SPLITS:
        table = tables[split]
        written = table.select(TRAINING_SAMPLES.names)
        assert written.num_columns == len(TRAINING_SAMPLES.names), split
        TRAINING_SAMPLES.validate_arrow(written)  # what every reader of the split checks
        rows.update({key: (split, row) for key, row in rows_by_key(table).items()})
    assert set(rows) == set(expected)
    for key, (cand, seq, bucket) in expected.items():
        _, row = rows[key]
        assert {n: row[n] for n in STATS} == pytest.approx(cand), key
        for n in STATS:
            assert row["seq_" + n] == pytest.approx([s[n] for s in seq]), (key, n)
        assert row["eval_pv_bucket"] == bucket, key


def assert_same_rows(local: dict[str, pa.Table], spark: dict[str, pa.Table]) -> None:
    assert spark["stats"].equals(local["stats"])  # the same rows, numbered alike
    for split in SPLITS:
        diff = bench.table_differences(spark[split], local[split], SORT_KEYS)
        assert diff["equal"], (split, diff)


def both_builders(cfg: Config) -> tuple[dict[str, pa.Table], dict[str, pa.Table], dict]:
    """The local builder's tables (read into memory), then the Spark builder's and its report."""
    lake = Lake.from_config(cfg)
    fs.apply(cfg)
    write_training_samples(cfg)
    local = read_splits(lake)
    report = spark_training.run(cfg)
    return local, read_splits(lake), report


def test_hand_cases_match_hand_values_and_the_local_builder(config: Config, spark) -> None:
    cfg = small_config(config)
    write_lake(cfg, sequences=SEQUENCE_ROWS + EXTRA_SEQUENCES, samples=SAMPLE_ROWS + EXTRA_SAMPLES)
    local, built, report = both_builders(cfg)
    expected = {**EXPECTED, **EXTRA_EXPECTED}
    check_expected(built, expected)
    check_expected(local, expected)  # the yardstick itself agrees with the hand values
    assert_same_rows(local, built)
    assert report["rows"] == {"train": 4, "valid": 2, "test": 3}
    assert sorted(report["seen_items"]) == [1, 2, 3, 4]
    # a split is a folder of part files in the contract: the ranker's reader takes it
    from tf_ranker.data import load_samples

    test = load_samples(Lake.from_config(cfg).training("test"))
    assert sorted(test.label.tolist()) == sorted(
        r[2] for r in SAMPLE_ROWS + EXTRA_SAMPLES if r[4] == "test")


def test_ttl_expires_rows_as_feast_does(config: Config, spark) -> None:
    cfg = small_config(config).with_overrides(feast={"item_stats_ttl_days": 1})
    write_lake(cfg)
    local, built, _ = both_builders(cfg)
    expected = dict(EXPECTED)
    # a row exactly one day old still counts; item 1's day-1 row at day 2.0 is one day old
    expected[(11, 3, 5)] = (DEFAULT, [DEFAULT] * 3, 0)
    expected[(11, 2, 9.9)] = (DEFAULT, [DEFAULT] * 3, 3)
    expected[(10, 1, 2)] = (ITEM1_D1, [DEFAULT] * 3, 1)
    check_expected(built, expected)
    assert_same_rows(local, built)


def test_a_sample_without_its_sequence_row_is_an_error(config: Config, spark) -> None:
    cfg = small_config(config)
    write_lake(cfg, sequences=[r for r in SEQUENCE_ROWS if r[:2] != (11, 5)])
    with pytest.raises(ValueError, match=r"no row for the samples of 1 \(user, time\), "
                                         r"e.g. user_id=11 at 2020-01-06"):
        spark_training.run(cfg)
    assert not Lake.from_config(cfg).training("train").exists()  # nothing half-written


def test_a_duplicated_sequence_row_is_an_error(config: Config, spark) -> None:
    cfg = small_config(config)
    write_lake(cfg, sequences=SEQUENCE_ROWS + [(10, 3, [0, 1, 2], 2)])
    with pytest.raises(ValueError, match="sequences has 2 rows for user_id=10 at 2020-01-04"):
        spark_training.run(cfg)


def test_an_unknown_split_is_named(config: Config, spark) -> None:
    cfg = small_config(config)
    write_lake(cfg, samples=[*SAMPLE_ROWS[:-1], (12, 4, 1, 0.5, "holdout")])
    with pytest.raises(ValueError, match="unknown split 'split=holdout'"):
        spark_training.run(cfg)
    assert not Lake.from_config(cfg).training("train").exists()


@pytest.mark.slow
def test_movielens_quick_lake_gives_the_local_builders_rows(config: Config, spark, movielens_dir: Path,
                                                           tmp_path: Path) -> None:
    # The quick run's own lake, built here (prepare + the Spark jobs, in a process of its own):
    # a fresh clone has no runs/ to borrow one from.
    raw = yaml.safe_load((REPO_ROOT / "configs" / "movielens.yaml").read_text())
    raw["run"] = {"name": "quick-lake", "root": str(tmp_path / "quick")}
    raw["data"]["source_dir"] = str(movielens_dir)
    config_file = tmp_path / "movielens.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    built_lake = subprocess.run(
        [sys.executable, "-m", "saviorrec.cli", "run", "--config", str(config_file), "--quick",
         "--only", "prepare", "--only", "spark"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert built_lake.returncode == 0, built_lake.stderr[-4000:]
    cfg = load_config(tmp_path / "quick-quick" / "config.yaml")  # the run's resolved config
    local, built, report = both_builders(cfg)
    assert sum(t.num_rows for t in local.values()) > 10_000
    assert_same_rows(local, built)
    assert report["rows"] == {s: local[s].num_rows for s in SPLITS}


def test_the_stage_on_spark_writes_the_same_item_table(config: Config, spark) -> None:
    cfg = small_config(config)
    write_lake(cfg)
    fs.apply(cfg)
    lake = Lake.from_config(cfg)
    local_report = run_training_set(cfg)  # the local profile's default: the local builder
    assert local_report["engine"] == "local"
    local_items = pq.read_table(lake.training_items)
    report = run_training_set(cfg.with_overrides(feast={"training_set_engine": "spark"}))
    assert report["engine"] == "spark"
    assert report["items"] == local_report["items"]
    assert pq.read_table(lake.training_items).equals(local_items)
    check_expected(read_splits(lake), EXPECTED)


def test_production_profile_resolves_to_spark(config: Config) -> None:
    assert config.feast.training_engine == "local"
    production = config.with_overrides(feast={"profile": "production"})
    assert production.feast.training_engine == "spark"
    assert production.with_overrides(
        feast={"training_set_engine": "local"}).feast.training_engine == "local"


@pytest.mark.spark_cluster
def test_spark_submit_on_a_standalone_cluster(config: Config, spark, standalone: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    cfg = small_config(config).with_overrides(
        spark={"driver_memory": "1g", "executor_memory": "512m", "shuffle_partitions": 2})
    write_lake(cfg, sequences=SEQUENCE_ROWS + EXTRA_SEQUENCES, samples=SAMPLE_ROWS + EXTRA_SAMPLES)
    fs.apply(cfg)
    write_training_samples(cfg)
    local = read_splits(Lake.from_config(cfg))
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    submitted = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", standalone,
         "--conf", "spark.executor.memory=512m", "--driver-memory", "1g",
         str(REPO_ROOT / "spark_jobs" / "training_set.py"), "--config", str(config_file)],
        cwd=REPO_ROOT, env=cluster_env(tmp_path), capture_output=True, text=True, timeout=600,
        check=False)
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    out = submitted.stdout  # the driver's log lines may come first: decode the JSON object alone
    result, _ = json.JSONDecoder().raw_decode(out, 0 if out.startswith("{") else out.index("\n{") + 1)
    assert result["master"] == standalone
    assert result["rows"] == {"train": 4, "valid": 2, "test": 3}
    built = read_splits(Lake.from_config(cfg))
    check_expected(built, {**EXPECTED, **EXTRA_EXPECTED})
    assert_same_rows(local, built)
