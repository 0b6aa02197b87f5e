"""Semantic id statistics and the disambiguation level.

Two items with the same L codes collide. The extra, last element of ``semantic_ids`` resolves it:
inside each group of items sharing their L codes, items ordered by item_id get 0, 1, 2, ...; an
item alone in its group gets 0. The full L + 1 ids are then unique and deterministic.
"""

from __future__ import annotations

import numpy as np


def utilization_per_level(codes: np.ndarray, *, codebook_size: int) -> list[float]:
    """codes [n, L] -> fraction of the K codes used at each level."""
    return [len(np.unique(codes[:, level])) / codebook_size for level in range(codes.shape[1])]


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """unique_ratio: distinct code tuples / items; collision_rate: share of items whose tuple is
    shared with at least one other item."""
    if len(codes) == 0:
        return {"unique_ratio": float("nan"), "collision_rate": float("nan")}
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return {"unique_ratio": len(counts) / len(codes),
            "collision_rate": float((counts[inverse.ravel()] > 1).mean())}


def disambiguate(codes: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """codes [n, L], item_ids [n] -> semantic ids [n, L + 1] (int64), unique per item."""
    codes = np.asarray(codes, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if len(np.unique(item_ids)) != len(item_ids):
        raise ValueError("item_ids must be unique")
    order = np.lexsort((item_ids, *codes.T[::-1]))  # by codes (level 1 first), then item_id
    sorted_codes = codes[order]
    new_group = np.ones(len(codes), dtype=bool)
    new_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(codes)), 0))
    extra = np.empty(len(codes), dtype=np.int64)
    extra[order] = np.arange(len(codes)) - group_start
    return np.concatenate([codes, extra[:, None]], axis=1)
