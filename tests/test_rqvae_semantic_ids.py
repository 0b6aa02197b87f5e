"""Collision statistics and the disambiguation level, on hand-built codes."""

from __future__ import annotations

import numpy as np
import pytest

from encoder_torch.semantic_ids import collision_stats, disambiguate, utilization_per_level


def test_disambiguation_by_item_id_makes_ids_unique() -> None:
    codes = np.array([[1, 2], [0, 5], [1, 2], [1, 2], [0, 5], [3, 3]])
    item_ids = np.array([40, 7, 10, 25, 3, 9])
    ids = disambiguate(codes, item_ids)
    # group (1,2): items 10, 25, 40 -> 0, 1, 2; group (0,5): items 3, 7 -> 0, 1; (3,3) alone -> 0
    assert ids[:, -1].tolist() == [2, 1, 0, 1, 0, 0]
    assert (ids[:, :2] == codes).all()
    assert len({tuple(r) for r in ids}) == len(ids)
    assert ids.dtype == np.int64


def test_disambiguation_does_not_depend_on_row_order() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 0]])
    item_ids = np.array([5, 2, 9])
    perm = np.array([2, 0, 1])
    a = dict(zip(item_ids.tolist(), map(tuple, disambiguate(codes, item_ids)), strict=True))
    b = dict(zip(item_ids[perm].tolist(), map(tuple, disambiguate(codes[perm], item_ids[perm])), strict=True))
    assert a == b == {5: (1, 2, 1), 2: (1, 2, 0), 9: (0, 0, 0)}


def test_collision_stats_by_hand() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 1], [0, 2], [0, 2], [0, 2]])
    stats = collision_stats(codes)
    assert stats["unique_ratio"] == pytest.approx(3 / 6)  # (1,2), (0,1), (0,2)
    assert stats["collision_rate"] == pytest.approx(5 / 6)  # all but the (0,1) item


def test_utilization_per_level() -> None:
    codes = np.array([[0, 1], [1, 1], [2, 1], [0, 3]])
    assert utilization_per_level(codes, codebook_size=4) == [3 / 4, 2 / 4]


def test_duplicate_item_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="unique"):
        disambiguate(np.zeros((2, 2)), np.array([1, 1]))
