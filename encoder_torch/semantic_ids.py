"""Semantic id statistics and the disambiguation level.

Two items with the same L codes collide. The extra, last element of ``semantic_ids`` resolves it:
inside each group of items sharing their L codes, items ordered by item_id get 0, 1, 2, ...; an
item alone in its group gets 0. The full L + 1 ids are then unique and deterministic.

``check_not_collapsed`` stops a run whose ids before that extra element cannot tell the items
apart (a level using few of its codes, or a low unique ratio), as the ranker's
check_not_collapsed (tf_ranker/train.py) stops a ranker that cannot rank.
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


class SemanticIdsCollapsed(RuntimeError):
    """The RQ-VAE's ids cannot tell the items apart: a level uses too few of its codes, or too
    many items share all their codes."""


def check_not_collapsed(codes: np.ndarray, *, codebook_size: int, min_utilization: float,
                        min_unique_ratio: float, distinct_inputs: int | None = None) -> None:
    """Raise SemanticIdsCollapsed when a level uses under ``min_utilization`` of the codes its
    items can use (all K, or one per item when K exceeds the items), or when the unique ratio
    before disambiguation is under ``min_unique_ratio`` of the most the ids allow: 1, K^L / items
    when the id space is smaller, or ``distinct_inputs`` / items when items share an embedding
    (equal inputs, equal ids, under any quantizer)."""
    items, levels = codes.shape
    usable = min(1.0, items / codebook_size)
    utilization = utilization_per_level(codes, codebook_size=codebook_size)
    problems = [f"level {level} uses {round(used * codebook_size)} of its {codebook_size} codes "
                f"({used:.1%}, under {min_utilization * usable:.1%} = rqvae.min_utilization "
                f"{min_utilization:.0%}{'' if usable == 1 else f' x the {usable:.1%} its items can use'})"
                for level, used in enumerate(utilization, start=1) if used < min_utilization * usable]
    bounds = {"": 1.0, f"{codebook_size}^{levels} ids for {items} items": codebook_size ** levels / items}
    if distinct_inputs is not None:
        bounds[f"{distinct_inputs} distinct embeddings for {items} items"] = distinct_inputs / items
    why, most = min(bounds.items(), key=lambda kv: kv[1])
    unique = collision_stats(codes)["unique_ratio"]
    if not unique >= min_unique_ratio * most:
        problems.append(f"{round(unique * items)} distinct ids for {items} items (unique ratio {unique:.2%}, "
                        f"under {min_unique_ratio * most:.2%} = rqvae.min_unique_ratio "
                        f"{min_unique_ratio:.0%}{'' if most >= 1 else f' x the {most:.2%} that {why} allow'})")
    if not problems:
        return
    per_level = ", ".join(f"{used:.1%}" for used in utilization)
    raise SemanticIdsCollapsed(
        f"semantic ids collapsed: {'; '.join(problems)} (codes used per level: {per_level}). "
        "Nothing was written. Check that the encoder's embeddings differ between items, or give "
        "the ids more room (rqvae.levels, rqvae.codebook_size).")


def disambiguate_new(codes: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """codes [n, L] of items added to a catalogue whose semantic ids are ``existing`` [m, L + 1]
    -> their semantic ids [n, L + 1]. An added item whose L codes no item has gets index 0; else
    the index after the largest one its codes already carry (earlier added items counted), so
    the catalogue's ids stay unique and the stored ones never change."""
    codes = np.asarray(codes, dtype=np.int64)
    existing = np.asarray(existing, dtype=np.int64).reshape(-1, codes.shape[1] + 1)
    following: dict[tuple[int, ...], int] = {}
    for row in existing:
        key = tuple(row[:-1].tolist())
        following[key] = max(following.get(key, 0), int(row[-1]) + 1)
    extra = np.empty(len(codes), dtype=np.int64)
    for i, row in enumerate(codes):
        key = tuple(row.tolist())
        extra[i] = following.get(key, 0)
        following[key] = extra[i] + 1
    return np.concatenate([codes, extra[:, None]], axis=1)
