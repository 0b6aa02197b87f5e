"""A tiny serving world, end to end through the real stages (imported by tests/test_serving_*).

Hand-made lake tables in the schemas -> feature_repo apply + materialize (production profile:
Redis; or local: sqlite) -> a small SaviorRanker with random weights saved as model.keras ->
tf_ranker.export.run_export -> the SavedModel the service loads. :class:`World` also keeps the
truth (latest stats, multimodal row and sequence per entity) to compute expected scores with
the Keras model, independently of Feast and of the serving code.

Items 1..n-4 have statistics; items 1..n-2 a multimodal row: n-3 and n-2 are cold (no stats),
n-1 and n unknown everywhere. Users 1..n_users have sequences (some holding unknown items);
any other user is unknown. benchmarks/serving.py builds its larger world with the same code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from saviorrec.config import Config
from saviorrec.lake import Lake, write_table
from saviorrec.schema import (
    ITEM_MULTIMODAL,
    ITEM_STAT_DEFAULTS,
    ITEM_STAT_NUMERIC,
    ITEM_STATS,
    SEQ_STAT_PREFIX,
    SEQUENCES,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    TRAINING_STATS,
    USER_STAT_NUMERIC,
)
from saviorrec.training_stats import compact

RQVAE_VERSION = "rq-serving-test"
T0 = datetime(2021, 3, 1, tzinfo=UTC)


def world_config(config: Config, *, profile: str, redis_env: str, dim: int = 8, levels: int = 2,
                 seq_len: int = 5) -> Config:
    return config.with_overrides(
        encoder={"dim": dim}, rqvae={"levels": levels, "codebook_size": 4},
        sequences={"max_len": seq_len}, feast={"profile": profile, "redis_env": redis_env},
        ranker={"id_dim": 4, "stat_dim": 4, "heads": 2, "attention_dim": 8, "mba_dim": 8,
                "dnn_units": [16, 8]},
    )


@dataclass
class World:
    """The truth behind the store: what an online read must return, by entity."""

    cfg: Config
    n_items: int
    n_users: int
    stats: dict[int, dict[str, float]] = field(default_factory=dict)  # latest row per item
    multimodal: dict[int, dict[str, Any]] = field(default_factory=dict)
    sequences: dict[int, list[int]] = field(default_factory=dict)  # latest, left-padded
    user_stats: dict[int, list[float]] = field(default_factory=dict)  # latest, USER_STAT_NUMERIC

    def user_features(self, user_id: int) -> list[float]:
        """An unknown user is a user with no earlier event: 0 events, 0 clicks, the prior rate."""
        return self.user_stats.get(user_id, [0.0, 0.0, self.cfg.stats.ctr_prior])

    def item_features(self, item_id: int) -> dict[str, Any]:
        """Features of one item as training sees them: defaults where a view has no row."""
        width = self.cfg.rqvae.levels + 1
        stats = self.stats.get(item_id, ITEM_STAT_DEFAULTS)
        mm = self.multimodal.get(item_id, {"embedding": [0.0] * self.cfg.encoder.dim,
                                           "semantic_ids": [0] * width})
        return {"stats": [float(stats[n]) for n in ITEM_STAT_NUMERIC],
                "pv_bucket": int(stats["pv_bucket"]), "embedding": mm["embedding"],
                "semantic_ids": mm["semantic_ids"]}

    def per_sample_inputs(self, user_id: int, item_ids: list[int]) -> dict[str, np.ndarray]:
        """One row per candidate, the sequence repeated (the training-time layout)."""
        seq = self.sequences.get(user_id, [0] * self.cfg.sequences.max_len)
        seq_feats = [self.item_features(i) if i else self.item_features(-1) for i in seq]
        cand = [self.item_features(i) for i in item_ids]
        n = len(item_ids)

        def tile(values: list[Any], dtype: str) -> np.ndarray:
            return np.repeat(np.asarray(values, dtype)[None], n, axis=0)

        return {
            "user_id": np.full(n, user_id, "int64"),
            "user_stats": tile(self.user_features(user_id), "float32"),
            "item_id": np.asarray(item_ids, "int64"),
            "item_stats": np.asarray([c["stats"] for c in cand], "float32"),
            "item_pv_bucket": np.asarray([c["pv_bucket"] for c in cand], "int64"),
            "item_embedding": np.asarray([c["embedding"] for c in cand], "float32"),
            "item_semantic_ids": np.asarray([c["semantic_ids"] for c in cand], "int64"),
            "seq_item_ids": tile(seq, "int64"),
            "seq_stats": tile([f["stats"] for f in seq_feats], "float32"),
            "seq_pv_bucket": tile([f["pv_bucket"] for f in seq_feats], "int64"),
            "seq_embedding": tile([f["embedding"] for f in seq_feats], "float32"),
            "seq_semantic_ids": tile([f["semantic_ids"] for f in seq_feats], "int64"),
        }


def _folder(table: pa.Table, folder: Path) -> None:
    """Like a Spark job: a part file plus _SUCCESS."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-00000.parquet", coerce_timestamps="us")
    (folder / "_SUCCESS").touch()


def write_world(cfg: Config, *, n_items: int = 40, n_users: int = 10, seed: int = 0,
                rqvae_version: str = RQVAE_VERSION) -> World:
    """Write item_stats, sequences and item_multimodal (two rows per entity: the later one wins)."""
    rng = np.random.default_rng(seed)
    lake, world = Lake.from_config(cfg), World(cfg, n_items, n_users)
    dim, width, seq_len = cfg.encoder.dim, cfg.rqvae.levels + 1, cfg.sequences.max_len
    buckets = np.asarray(cfg.stats.pv_buckets)
    stats_rows, mm_rows, seq_rows = [], [], []
    for item in range(1, n_items - 3):
        for days in (1, 20):
            pv = int(rng.integers(0, 300))
            clicks = int(rng.integers(0, pv + 1))
            row = {"item_id": item, "event_timestamp": T0 + timedelta(days=days), "pv": pv,
                   "clicks": clicks, "ctr": (clicks + 5) / (pv + 10), "pv_recent": pv // 2,
                   "clicks_recent": clicks // 2, "ctr_recent": (clicks // 2 + 5) / (pv // 2 + 10),
                   "pv_bucket": int(np.searchsorted(buckets, pv, side="right") - 1)}
            stats_rows.append(row)
        world.stats[item] = {n: float(np.float32(row[n])) for n in (*ITEM_STAT_NUMERIC,
                                                                    "pv_bucket")}
    for item in range(1, n_items - 1):
        for days in (0, 2):
            row = {"item_id": item, "embedding": rng.standard_normal(dim).astype("float32").tolist(),
                   "semantic_ids": [*rng.integers(0, 4, width - 1).tolist(), 0],
                   "encoder_version": "enc-test", "rqvae_version": rqvae_version,
                   "event_timestamp": T0 + timedelta(days=days)}
            mm_rows.append(row)
        world.multimodal[item] = row
    for user in range(1, n_users + 1):
        for days in (5, 30):
            k = int(rng.integers(0, seq_len + 1)) if user > 1 else seq_len  # user 1: full
            ids = [0] * (seq_len - k) + rng.integers(1, n_items + 1, k).tolist()
            pv = int(rng.integers(k, 4 * seq_len + 1))
            clicks = int(rng.integers(k, pv + 1))
            stats = [float(pv), float(clicks), float(np.float32((clicks + 1) / (pv + 2)))]
            seq_rows.append({"user_id": user, "event_timestamp": T0 + timedelta(days=days),
                             "seq_item_ids": ids, "seq_len": k,
                             **dict(zip(USER_STAT_NUMERIC, stats, strict=True))})
        world.sequences[user], world.user_stats[user] = ids, stats
    _folder(pa.Table.from_pylist(stats_rows, schema=ITEM_STATS.arrow_schema()),
            lake.spark("item_stats"))
    _folder(pa.Table.from_pylist(seq_rows, schema=SEQUENCES.arrow_schema()), lake.spark("sequences"))
    lake.item_multimodal.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(mm_rows, schema=ITEM_MULTIMODAL.arrow_schema()),
                   lake.item_multimodal, coerce_timestamps="us")
    _write_training_tables(world)
    return world


def _write_training_tables(world: World) -> None:
    """training items + a few test rows: run_export builds sample_request.json from them."""
    lake, cfg = Lake.from_config(world.cfg), world.cfg
    ids = sorted(world.multimodal)
    write_table(pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "embedding": pa.array([world.multimodal[i]["embedding"] for i in ids], pa.list_(pa.float32())),
        "semantic_ids": pa.array([world.multimodal[i]["semantic_ids"] for i in ids],
                                 pa.list_(pa.int64())),
    }), lake.training_items, TRAINING_ITEMS)
    rows = []
    for k, item in enumerate((1, 2, 3, 4, world.n_items - 3)):
        f, seq = world.item_features(item), world.sequences[1]
        seq_f = [world.item_features(i if i else -1) for i in seq]
        rows.append({"user_id": 1, "item_id": item, "label": k % 2,
                     "event_timestamp": T0 + timedelta(days=40, minutes=k), "eval_pv_bucket": 0,
                     **dict(zip(ITEM_STAT_NUMERIC, f["stats"], strict=True)),
                     "pv_bucket": f["pv_bucket"], "seq_item_ids": seq, "seq_len": len(seq),
                     **dict(zip(USER_STAT_NUMERIC, world.user_features(1), strict=True)),
                     **{SEQ_STAT_PREFIX + n: [s["stats"][j] for s in seq_f]
                        for j, n in enumerate(ITEM_STAT_NUMERIC)},
                     SEQ_STAT_PREFIX + "pv_bucket": [s["pv_bucket"] for s in seq_f]})
    wide = pa.Table.from_pylist(rows)
    splits, stats = compact({split: wide for split in ("train", "valid", "test")})
    write_table(stats, lake.training_stats, TRAINING_STATS)
    for split, table in splits.items():
        write_table(table, lake.training(split), TRAINING_SAMPLES)
    assert cfg.sequences.max_len == len(world.sequences[1])


def save_ranker(world: World, *, rqvae_version: str = RQVAE_VERSION, seed: int = 0) -> Any:
    """A SaviorRanker (variant full) with random weights, saved where run_export reads it."""
    import keras

    from tf_ranker.models import SaviorRanker

    cfg, r = world.cfg, world.cfg.ranker
    model = SaviorRanker(
        variant="full", num_users=world.n_users + 1, num_items=world.n_items + 1,
        num_pv_buckets=len(cfg.stats.pv_buckets), embedding_dim=cfg.encoder.dim,
        levels=cfg.rqvae.levels, codebook_size=cfg.rqvae.codebook_size,
        semantic_id_width=cfg.rqvae.levels + 1, id_dim=r.id_dim, stat_dim=r.stat_dim,
        heads=r.heads, attention_dim=r.attention_dim, mba_dim=r.mba_dim,
        dnn_units=r.dnn_units, rqvae_version=rqvae_version)
    rng = np.random.default_rng(seed)
    for weight in model.weights:  # random everywhere (the MBA codebook starts at zero otherwise)
        weight.assign(rng.normal(0.0, 0.15, weight.shape).astype(weight.dtype))
    path = Lake.from_config(cfg).ranker("full", 0).model
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return keras.saving.load_model(path, compile=False)


def build_world(cfg: Config, *, n_items: int = 40, n_users: int = 10,
                rqvae_version: str = RQVAE_VERSION, model_rqvae_version: str | None = None,
                ) -> tuple[World, Any]:
    """Lake -> Feast apply + materialize -> model.keras -> run_export. Returns (truth, model)."""
    from feature_repo import store as fs
    from tf_ranker.export import run_export

    world = write_world(cfg, n_items=n_items, n_users=n_users, rqvae_version=rqvae_version)
    fs.apply(cfg)
    fs.materialize(cfg, (T0 - timedelta(days=1)).isoformat(), (T0 + timedelta(days=60)).isoformat())
    model = save_ranker(world, rqvae_version=model_rqvae_version or rqvae_version)
    run_export(cfg, variant="full", seed=0)
    return world, model


def set_env(name: str, value: str | None) -> str | None:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    return old


# --- pytest fixtures (imported by the test_serving_* modules) ----------------------------------
REDIS_ENV = "SAVIORREC_TEST_SERVING_REDIS"
PASSWORD = "s3rv-Pa55!word"


@dataclass
class Served:
    """The session's world: production profile on a password-protected redis-server."""

    cfg: Config
    world: World
    model: Any
    redis: Any
    dump: Path  # an RDB snapshot of the materialised store, to start copies from


@pytest.fixture(scope="session", name="served")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from conftest import RedisServer, load_config

    from saviorrec.config import REPO_ROOT

    root = tmp_path_factory.mktemp("serving")
    server = RedisServer(root, password=PASSWORD)
    server.start()
    old = set_env(REDIS_ENV, server.url)
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(root / "run")})
    cfg = world_config(cfg, profile="production", redis_env=REDIS_ENV)
    try:
        world, model = build_world(cfg)
        redis.Redis.from_url(server.url).save()
        yield Served(cfg, world, model, server, root / "dump.rdb")
    finally:
        server.stop()
        set_env(REDIS_ENV, old)


@pytest.fixture(name="redis_copy")
def redis_copy_fixture(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh password-protected redis-server holding the materialised store (restartable)."""
    from conftest import RedisServer

    shutil.copy(served.dump, tmp_path / "dump.rdb")
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    monkeypatch.setenv(REDIS_ENV, server.url)
    yield server
    server.stop()
