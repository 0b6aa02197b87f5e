"""Random model inputs of the real shapes, for throughput benchmarks and smoke tests.

Numpy only (no backend import): ``inputs, labels = synthetic_inputs(batch_size=1024)``.
Defaults are the paper's sizes: d=64, L=8 levels of K=2048 codes, sequences of 50 items.
"""

from __future__ import annotations

import numpy as np

from saviorrec.ranker_inputs import (
    ITEM_EMBEDDING,
    ITEM_ID,
    ITEM_PV_BUCKET,
    ITEM_SEMANTIC_IDS,
    ITEM_STATS,
    NUM_STATS,
    NUM_USER_STATS,
    SEQ_EMBEDDING,
    SEQ_ITEM_IDS,
    SEQ_PV_BUCKET,
    SEQ_SEMANTIC_IDS,
    SEQ_STATS,
    USER_ID,
    USER_STATS,
)


def synthetic_inputs(
    *,
    batch_size: int = 1024,
    seq_len: int = 50,
    embedding_dim: int = 64,
    levels: int = 8,
    codebook_size: int = 2048,
    num_users: int = 10_000,
    num_items: int = 100_000,
    num_pv_buckets: int = 5,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One batch: ``(inputs by name, labels float32 [B, 1])``; ~20% padding in the sequences."""
    rng = np.random.default_rng(seed)
    b, s = batch_size, seq_len

    def stats(*shape: int) -> np.ndarray:
        pv = rng.integers(0, 1000, (*shape, 1)).astype("float32")
        clicks = np.floor(pv * rng.random((*shape, 1), dtype="float32"))
        out = np.concatenate([pv, clicks, (clicks + 5) / (pv + 10)] * 2, axis=-1)
        return out[..., :NUM_STATS].astype("float32")

    def semantic_ids(*shape: int) -> np.ndarray:
        codes = rng.integers(0, codebook_size, (*shape, levels))
        return np.concatenate([codes, np.zeros((*shape, 1), "int64")], axis=-1).astype("int64")

    seq_ids = rng.integers(1, num_items, (b, s)).astype("int64")
    seq_ids[rng.random((b, s)) < 0.2] = 0
    inputs = {
        USER_ID: rng.integers(1, num_users, b).astype("int64"),
        USER_STATS: stats(b)[:, :NUM_USER_STATS],
        ITEM_ID: rng.integers(1, num_items, b).astype("int64"),
        ITEM_STATS: stats(b),
        ITEM_PV_BUCKET: rng.integers(0, num_pv_buckets, b).astype("int64"),
        ITEM_EMBEDDING: rng.standard_normal((b, embedding_dim), dtype="float32"),
        ITEM_SEMANTIC_IDS: semantic_ids(b),
        SEQ_ITEM_IDS: seq_ids,
        SEQ_STATS: stats(b, s),
        SEQ_PV_BUCKET: rng.integers(0, num_pv_buckets, (b, s)).astype("int64"),
        SEQ_EMBEDDING: rng.standard_normal((b, s, embedding_dim), dtype="float32"),
        SEQ_SEMANTIC_IDS: semantic_ids(b, s),
    }
    labels = (rng.random((b, 1)) < 0.3).astype("float32")
    return inputs, labels
