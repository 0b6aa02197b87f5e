"""The Feast stage through a real local store: duckdb offline, sqlite online."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from test_feast_lake import (
    ITEM_STATS_ROWS,
    MULTIMODAL_ROWS,
    SEQ_LEN,
    SEQUENCE_ROWS,
    day,
    small_config,
    stats_row,
    user_stats,
    write_lake,
)

from feature_repo import store as fs
from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from saviorrec.schema import ITEM_STAT_DEFAULTS, TRAINING_ITEMS, TRAINING_SAMPLES, USER_STAT_NUMERIC
from saviorrec.training_stats import expand
from tf_ranker.data import load_items

STATS = ("pv", "clicks", "ctr", "pv_recent", "clicks_recent", "ctr_recent", "pv_bucket")
DEFAULT = {n: ITEM_STAT_DEFAULTS[n] for n in STATS}


def row_stats(item: int, d: float) -> dict[str, float]:
    """Stats of the hand rows: the latest row of ``item`` stamped <= day d (by hand below)."""
    row = {
        (1, 1): stats_row(1, 1, 1, 1, 0.625, 1), (1, 3): stats_row(1, 3, 5, 2, 0.4, 1),
        (2, 2): stats_row(2, 2, 2, 0, 0.25, 1), (2, 10): stats_row(2, 10, 30, 9, 0.3, 3),
    }[(item, d)]
    return {n: row[n] for n in STATS}


# sample (user, item, day) -> candidate stats, [stats per sequence position], eval bucket
ITEM1_D1, ITEM1_D3, ITEM2_D2 = row_stats(1, 1), row_stats(1, 3), row_stats(2, 2)
EXPECTED = {
    (10, 1, 2): (ITEM1_D1, [DEFAULT] * 3, 1),
    (10, 2, 3): (ITEM2_D2, [DEFAULT, DEFAULT, ITEM1_D3], 3),  # row stamped exactly t is used
    (10, 1, 3): (ITEM1_D3, [DEFAULT, DEFAULT, ITEM1_D3], 1),
    (11, 3, 5): (DEFAULT, [DEFAULT, ITEM1_D3, ITEM2_D2], 0),
    (11, 2, 9.9): (ITEM2_D2, [ITEM1_D3, ITEM2_D2, DEFAULT], 3),  # never item 2's day-10 row
    (12, 4, 0.5): (DEFAULT, [DEFAULT, DEFAULT, DEFAULT], 0),  # item 1's first row is day 1
}
SPLIT_KEYS = {"train": [(10, 1, 2), (10, 2, 3), (12, 4, 0.5)], "valid": [(10, 1, 3)],
              "test": [(11, 3, 5), (11, 2, 9.9)]}


@pytest.fixture()
def cfg(config: Config) -> Config:
    cfg = small_config(config)
    write_lake(cfg)
    fs.apply(cfg)
    return cfg


def _check_training_rows(cfg: Config, expected: dict) -> None:
    lake = Lake.from_config(cfg)
    for split, keys in SPLIT_KEYS.items():
        table = pq.read_table(lake.training(split))
        assert table.schema == TRAINING_SAMPLES.arrow_schema()
        got = expand(table, pq.read_table(lake.training_stats)).to_pylist()
        assert [(r["user_id"], r["item_id"], r["event_timestamp"]) for r in got] == [
            (u, i, day(d)) for u, i, d in keys]
        for r, key in zip(got, keys, strict=True):
            cand, seq, bucket = expected[key]
            assert {n: r[n] for n in STATS} == pytest.approx(cand), key
            for n in STATS:
                assert r["seq_" + n] == pytest.approx([s[n] for s in seq]), (key, n)
            assert r["eval_pv_bucket"] == bucket
            assert len(r["seq_item_ids"]) == SEQ_LEN
            # the user's statistics come from the same sequences row (exact time match)
            assert {n: r[n] for n in USER_STAT_NUMERIC} == pytest.approx(
                user_stats(r["seq_len"])), key


def test_apply_registers_views_and_services(cfg: Config) -> None:
    store = fs.get_store(cfg)
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {"item_stats", "item_multimodal", "user_sequence"}
    assert views["item_stats"].ttl.days == cfg.feast.item_stats_ttl_days
    mm = {f.name: str(f.dtype) for f in views["item_multimodal"].features}
    assert mm == {"embedding": "Array(Float32)", "semantic_ids": "Array(Int64)",
                  "encoder_version": "String", "rqvae_version": "String"}
    assert {s.name for s in store.list_feature_services()} == {"ranker_training", "ranker_serving"}
    assert (Lake.from_config(cfg).feast_data / "registry.db").is_file()


@pytest.mark.parametrize("join", ["duckdb_asof", "feast"])
def test_training_set_is_point_in_time(cfg: Config, join: str) -> None:
    cfg = cfg.with_overrides(feast={"sequence_stats_join": join})
    report = fs.training_set(cfg)
    assert report["sequence_stats_join"] == join
    assert report["samples_in"] == report["samples_out"] == {"train": 3, "valid": 1, "test": 2}
    assert report["unknown"] == {"candidates_without_stats": 2, "sequence_items": 8,
                                 "sequence_items_without_stats": 2,
                                 "candidates_without_item_pv": 1}
    _check_training_rows(cfg, EXPECTED)


@pytest.mark.parametrize("join", ["duckdb_asof", "feast"])
def test_training_set_respects_the_ttl(config: Config, join: str) -> None:
    cfg = small_config(config).with_overrides(
        feast={"item_stats_ttl_days": 1, "sequence_stats_join": join})
    write_lake(cfg)
    fs.apply(cfg)
    fs.training_set(cfg)
    expected = dict(EXPECTED)
    # rows older than one day expire: day 2 -> day 3 is exactly the TTL and still counts
    expected[(11, 3, 5)] = (DEFAULT, [DEFAULT] * 3, 0)
    expected[(11, 2, 9.9)] = (DEFAULT, [DEFAULT] * 3, 3)
    expected[(10, 1, 2)] = (ITEM1_D1, [DEFAULT] * 3, 1)
    _check_training_rows(cfg, expected)


def test_training_items_are_dense_and_versioned(cfg: Config) -> None:
    report = fs.training_set(cfg)
    assert report["items"] == {"rows": 4, "embedding_dim": 4, "semantic_ids_len": 3,
                               "encoder_version": "enc-1", "rqvae_version": "rq-1",
                               "items_without_multimodal": 1}
    table = pq.read_table(Lake.from_config(cfg).training_items)
    assert table.schema == TRAINING_ITEMS.arrow_schema()
    assert table["item_id"].to_pylist() == [1, 2, 3, 4]  # no padding row: the reader adds it
    assert table["embedding"][1].as_py() == [2.0, 0.5, -1.0, 0.25]
    assert table["embedding"][3].as_py() == [0.0] * 4
    assert table["semantic_ids"][2].as_py() == [3, 4, 0]
    # the ranker reads exactly this file (the two stages once disagreed on the padding row)
    lookup = load_items(Lake.from_config(cfg).training_items)
    assert lookup.embedding.shape == (5, 4) and not lookup.embedding[0].any()
    assert lookup.embedding[2].tolist() == [2.0, 0.5, -1.0, 0.25]
    assert lookup.semantic_ids[3].tolist() == [3, 4, 0]


def test_missing_sequence_row_is_an_error(config: Config) -> None:
    cfg = small_config(config)
    write_lake(cfg, sequences=[r for r in SEQUENCE_ROWS if r[:2] != (11, 5)])
    fs.apply(cfg)
    with pytest.raises(ValueError, match=r"no row for 1 samples, e.g. user_id=11"):
        fs.training_set(cfg)
    assert not Lake.from_config(cfg).training("train").exists()  # nothing half-written


def assert_online_equals_offline(store, user: int = 11) -> None:
    """Online values after materialize = the latest offline row per item (computed here)."""
    latest = {}
    for row in ITEM_STATS_ROWS:
        if row["item_id"] not in latest or row["event_timestamp"] > latest[row["item_id"]]["event_timestamp"]:
            latest[row["item_id"]] = row
    got = fs.online_features(store, user, [1, 3, 4])
    assert got.sequence == fs.UserSequence(item_ids=[2, 4, 3], seq_len=3, known=True,
                                           stats=(6.0, 3.0, 0.5))
    assert set(got.items) == {1, 2, 3, 4}
    for item, row in latest.items():
        assert {n: got.items[item][n] for n in STATS} == pytest.approx({n: row[n] for n in STATS})
    for mm in MULTIMODAL_ROWS:
        for n in ("embedding", "semantic_ids", "encoder_version", "rqvae_version"):
            assert got.items[mm["item_id"]][n] == pytest.approx(mm[n])
    assert got.missing == [3, 4]


def test_materialize_online_equals_offline_sqlite(cfg: Config) -> None:
    report = fs.materialize(cfg, None, "2020-02-01")
    assert report["start"] == day(0).isoformat()
    assert report["entities"] == {"item_stats": 2, "user_sequence": 3, "item_multimodal": 3}
    assert_online_equals_offline(fs.get_store(cfg))


def test_unknown_entities_get_defaults_and_are_counted(cfg: Config) -> None:
    fs.materialize(cfg, "2020-01-01", "2020-02-01")
    store = fs.get_store(cfg)
    before = dict(fs.UNKNOWN_ENTITIES)
    got = fs.online_features(store, 999, [4, 3])
    assert got.sequence == fs.UserSequence(item_ids=[], seq_len=0, known=False)
    assert got.items[4] == {**ITEM_STAT_DEFAULTS, "embedding": [0.0] * 4, "semantic_ids": [0] * 3,
                            "encoder_version": "", "rqvae_version": ""}
    assert got.items[3]["pv"] == 0 and got.items[3]["embedding"] == pytest.approx([3, .5, -1, .25])
    assert got.missing == [3, 4]
    after = fs.UNKNOWN_ENTITIES
    assert after["users"] - before.get("users", 0) == 1
    assert after["item_stats"] - before.get("item_stats", 0) == 2
    assert after["item_multimodal"] - before.get("item_multimodal", 0) == 1


def cli_store_yaml(cfg: Config, path: Path) -> Path:
    """feature_repo/feature_store.yaml with the registry and sqlite file of ``cfg``'s run as
    absolute paths, for ``feast -c feature_repo -f <path>``."""
    feast_dir = Lake.from_config(cfg).feast_data
    feast_dir.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load((REPO_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    settings["registry"] = str(feast_dir / "registry.db")
    settings["online_store"]["path"] = str(feast_dir / "online.db")
    path.write_text(yaml.safe_dump(settings))
    return path


def test_feast_cli_apply_and_materialize(config: Config, tmp_path: Path) -> None:
    """`feast -c feature_repo -f <yaml> apply|materialize` as Feast users run it, on this run."""
    cfg = small_config(config)
    write_lake(cfg)
    cli_store_yaml(cfg, tmp_path / "feature_store.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "SAVIORREC_CONFIG": str(tmp_path / "config.yaml")}
    feast = [str(Path(sys.executable).parent / "feast"), "-c", str(REPO_ROOT / "feature_repo"),
             "-f", str(tmp_path / "feature_store.yaml")]
    for args in (["apply"], ["materialize", "2020-01-01T00:00:00", "2020-02-01T00:00:00"]):
        out = subprocess.run(feast + args, capture_output=True, text=True, env=env, timeout=300,
                             check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert_online_equals_offline(fs.get_store(cfg))


def _random_lake(cfg: Config, n_samples: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random tables with ties (half-day grid), unknown items and same-time samples."""
    rng = np.random.default_rng(seed)
    stats = [stats_row(int(i), float(d), int(rng.integers(0, 200)), int(rng.integers(0, 50)),
                       float(rng.random()), int(rng.integers(0, 5)))
             for i in range(1, 31) for d in np.unique(rng.integers(0, 200, rng.integers(0, 6)) / 2)]
    samples = pd.DataFrame({
        "user": rng.integers(1, 51, n_samples), "item": rng.integers(1, 36, n_samples),
        "label": rng.integers(0, 2, n_samples), "day": rng.integers(0, 200, n_samples) / 2,
        "split": rng.choice(["train", "valid", "test"], n_samples)})
    sequences = []
    for user, d in samples[["user", "day"]].drop_duplicates().itertuples(index=False):
        k = int(rng.integers(0, SEQ_LEN + 1))
        ids = [0] * (SEQ_LEN - k) + rng.integers(1, 36, k).tolist()
        sequences.append((int(user), float(d), ids, k))
    write_lake(cfg, stats=stats, sequences=sequences,
               samples=[tuple(r) for r in samples.itertuples(index=False)],
               item_pv=[(i, i, i % 5) for i in range(1, 31)])
    seq = {(u, d): ids for u, d, ids, _ in sequences}
    samples["seq"] = [seq[(u, d)] for u, d in zip(samples["user"], samples["day"], strict=True)]
    return samples, pd.DataFrame(stats)


def _asof_pv(items: np.ndarray, days: np.ndarray, stats: pd.DataFrame) -> np.ndarray:
    """pandas merge_asof, independent of Feast and duckdb: pv of the latest row <= t, else 0."""
    left = pd.DataFrame({"item_id": items, "event_timestamp": [day(d) for d in days],
                         "order": np.arange(len(items))}).sort_values("event_timestamp")
    right = stats[["item_id", "event_timestamp", "pv"]].sort_values("event_timestamp")
    merged = pd.merge_asof(left, right, on="event_timestamp", by="item_id",
                           direction="backward", allow_exact_matches=True)
    return merged.sort_values("order")["pv"].fillna(0).to_numpy(np.float32)


def test_training_set_in_chunks_matches_an_independent_asof(config: Config) -> None:
    cfg = small_config(config)
    samples, stats = _random_lake(cfg, n_samples=2_300)
    fs.apply(cfg)
    report = fs.training_set(cfg)  # chunks of 1,000 rows: three chunks
    counts = samples["split"].value_counts().to_dict()
    assert report["samples_in"] == report["samples_out"] == counts
    seq_items = np.array(samples["seq"].tolist())
    for split in ("train", "valid", "test"):
        want = samples[samples["split"] == split]
        lake = Lake.from_config(cfg)
        got = expand(pq.read_table(lake.training(split)),
                     pq.read_table(lake.training_stats)).to_pandas()
        assert got["item_id"].tolist() == want["item"].tolist()
        np.testing.assert_array_equal(got["pv"].to_numpy(),
                                      _asof_pv(want["item"].to_numpy(), want["day"].to_numpy(),
                                               stats))
        ids = seq_items[want.index]
        expect = _asof_pv(ids.ravel(), np.repeat(want["day"].to_numpy(), SEQ_LEN), stats)
        expect[ids.ravel() == 0] = 0
        np.testing.assert_array_equal(np.stack(got["seq_pv"].to_numpy()), expect.reshape(-1, SEQ_LEN))
        assert np.stack(got["seq_item_ids"].to_numpy()).tolist() == ids.tolist()
