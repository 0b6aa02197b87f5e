"""A tiny, seeded ranker training set in the TRAINING_SAMPLES / TRAINING_ITEMS contract,
plus the RQ-VAE codebooks and version.json, written where the Lake expects them.

Items have a latent topic that drives their embedding and first semantic id; each user
clicks items of a favourite topic (85%), so multimodal variants have a signal to learn.
Imported by the other test_ranker*/test_layer* files; the test below checks the contract.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from saviorrec.config import REPO_ROOT, Config, load_config
from saviorrec.lake import Lake, read_table, write_table
from saviorrec.schema import (
    ITEM_STAT_NUMERIC,
    SEQ_STAT_PREFIX,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    TRAINING_STATS,
)
from saviorrec.training_stats import compact

RQVAE_VERSION = "rqvae-test-1"


def _stats(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    pv = rng.integers(0, 200, shape).astype("float32")
    clicks = np.floor(pv * rng.random(shape)).astype("float32")
    pv_r = np.floor(pv * rng.random(shape)).astype("float32")
    clicks_r = np.minimum(clicks, pv_r)
    return {"pv": pv, "clicks": clicks, "ctr": (clicks + 5) / (pv + 10),
            "pv_recent": pv_r, "clicks_recent": clicks_r, "ctr_recent": (clicks_r + 5) / (pv_r + 10)}


def training_world(root: Path, **ranker: object) -> Config:
    """configs/movielens.yaml with its run in ``root`` and ``ranker`` overrides, holding the
    tiny seeded training set of :func:`write_training_set` (identical for every root)."""
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(root)}, ranker=ranker)
    write_training_set(cfg)
    return cfg


def write_training_set(cfg: Config, *, n_users: int = 12, n_items: int = 30, dim: int = 8,
                       levels: int = 2, codebook_size: int = 4, latent: int = 8,
                       seq_len: int = 5, rows: tuple[int, int, int] = (160, 48, 48),
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Write train/valid/test samples, the item table and the RQ codebooks; return the truth."""
    rng = np.random.default_rng(seed)
    lake = Lake.from_config(cfg)
    n_topics = min(3, codebook_size)
    topic = rng.integers(0, n_topics, n_items + 1)  # index = item id; item 0 unused
    centers = rng.standard_normal((n_topics, dim)).astype("float32")
    embedding = centers[topic] + 0.3 * rng.standard_normal((n_items + 1, dim)).astype("float32")
    codes = np.concatenate([topic[:, None], rng.integers(0, codebook_size, (n_items + 1, levels - 1)),
                            np.zeros((n_items + 1, 1), "int64")], axis=1).astype("int64")
    item_ids = np.arange(1, n_items + 1)
    write_table(pa.table({
        "item_id": pa.array(item_ids, pa.int64()),
        "embedding": pa.array(list(embedding[1:]), pa.list_(pa.float32())),
        "semantic_ids": pa.array(list(codes[1:]), pa.list_(pa.int64())),
    }), lake.training_items, TRAINING_ITEMS)

    favourite = rng.integers(0, n_topics, n_users + 1)
    buckets = np.asarray(cfg.stats.pv_buckets)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    wide = {}
    for split, n in zip(("train", "valid", "test"), rows, strict=True):
        users = rng.integers(1, n_users + 1, n)
        items = rng.integers(1, n_items + 1, n)
        likes = topic[items] == favourite[users]
        label = np.where(rng.random(n) < 0.85, likes, ~likes).astype("int64")
        # Sequence: earlier clicks, mostly of the favourite topic, left-padded with 0.
        lengths = rng.integers(0, seq_len + 1, n)
        seq = np.zeros((n, seq_len), "int64")
        for r in range(n):
            pool = item_ids[topic[1:] == favourite[users[r]]]
            if lengths[r]:
                seq[r, seq_len - lengths[r]:] = rng.choice(pool, lengths[r])
        stats, seq_stats = _stats(rng, (n,)), _stats(rng, (n, seq_len))
        user_pv = rng.integers(0, 100, n).astype("float32")
        user_clicks = np.floor(user_pv * rng.random(n)).astype("float32")
        for values in seq_stats.values():
            values[seq == 0] = 0.0  # padding positions hold the defaults
        columns = {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int64()),
            "label": pa.array(label, pa.int64()),
            "event_timestamp": pa.array([start + timedelta(minutes=i) for i in range(n)],
                                        pa.timestamp("us", tz="UTC")),
            "eval_pv_bucket": pa.array(rng.integers(0, len(buckets), n), pa.int64()),
            **{k: pa.array(stats[k], pa.float32()) for k in ITEM_STAT_NUMERIC},
            "user_pv": pa.array(user_pv, pa.float32()),
            "user_clicks": pa.array(user_clicks, pa.float32()),
            "user_ctr": pa.array((user_clicks + 1) / (user_pv + 2), pa.float32()),
            "pv_bucket": pa.array(np.searchsorted(buckets, stats["pv"], side="right") - 1,
                                  pa.int64()),
            "seq_item_ids": pa.array(list(seq), pa.list_(pa.int64())),
            "seq_len": pa.array(lengths, pa.int64()),
            **{SEQ_STAT_PREFIX + k: pa.array(list(seq_stats[k]), pa.list_(pa.float32()))
               for k in ITEM_STAT_NUMERIC},
            SEQ_STAT_PREFIX + "pv_bucket": pa.array(
                list(np.where(seq == 0, 0, np.searchsorted(buckets, seq_stats["pv"], "right") - 1)),
                pa.list_(pa.int64())),
        }
        wide[split] = pa.table(columns)
    splits, stats = compact(wide)
    write_table(stats, lake.training_stats, TRAINING_STATS)
    for split, table in splits.items():
        write_table(table, lake.training(split), TRAINING_SAMPLES)

    lake.rqvae_dir.mkdir(parents=True, exist_ok=True)
    codebook = rng.standard_normal((levels, codebook_size, latent)).astype("float32")
    np.save(lake.rqvae_codebooks, codebook)
    lake.rqvae_version.write_text(json.dumps({"rqvae_version": RQVAE_VERSION}))
    return {"embedding": embedding, "semantic_ids": codes, "codebook": codebook, "topic": topic}


def test_training_set_follows_the_contract(config: Config) -> None:
    truth = write_training_set(config)
    lake = Lake.from_config(config)
    items = read_table(lake.training_items, TRAINING_ITEMS)
    assert items.num_rows == 30
    assert items["semantic_ids"][0].as_py() == truth["semantic_ids"][1].tolist()
    test = read_table(lake.training("test"), TRAINING_SAMPLES)
    seq = np.array(test["seq_item_ids"].to_pylist())
    assert seq.shape == (48, 5)
    # seq_len counts the non-padding positions, padding sits on the left.
    assert (test["seq_len"].to_numpy() == (seq != 0).sum(axis=1)).all()
