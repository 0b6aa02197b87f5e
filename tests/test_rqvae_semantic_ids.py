"""Collision statistics, the disambiguation level and the collapse check, on hand-built codes."""

from __future__ import annotations

import numpy as np
import pytest

from encoder_torch.semantic_ids import (
    SemanticIdsCollapsed,
    check_not_collapsed,
    collision_stats,
    disambiguate,
    utilization_per_level,
)


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


def test_collapse_names_the_level_and_the_figures() -> None:
    # K=8 and 6 items: a level can use at most 6 codes (75%), so its floor is 50% x 75% = 37.5%.
    # Level 1 uses codes {0, 1, 2, 3} (50%: above), level 2 only code 5 (12.5%: under).
    # 5 distinct embeddings allow at most 5/6 unique ids: floor 90% x 83.33% = 75%; 4/6 are.
    codes = np.array([[0, 5], [1, 5], [2, 5], [3, 5], [0, 5], [1, 5]])
    with pytest.raises(SemanticIdsCollapsed) as err:
        check_not_collapsed(codes, codebook_size=8, min_utilization=0.5, min_unique_ratio=0.9,
                            distinct_inputs=5)
    message = str(err.value)
    assert ("level 2 uses 1 of its 8 codes (12.5%, under 37.5% = rqvae.min_utilization 50% x the "
            "75.0% its items can use)") in message
    assert "level 1 uses" not in message
    assert ("4 distinct ids for 6 items (unique ratio 66.67%, under 75.00% = "
            "rqvae.min_unique_ratio 90% x the 83.33% that 5 distinct embeddings for 6 items "
            "allow)") in message
    assert "codes used per level: 50.0%, 12.5%" in message


def test_the_id_space_bounds_the_unique_floor() -> None:
    # K=2, L=2: 4 ids for 8 items, at most 50% unique; 4 distinct ids meet any floor
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 2)
    check_not_collapsed(codes, codebook_size=2, min_utilization=1.0, min_unique_ratio=1.0)
    # 2 distinct ids: 25% unique, under 60% x 50% = 30%
    with pytest.raises(SemanticIdsCollapsed, match=r"2 distinct ids for 8 items \(unique ratio "
                       r"25\.00%, under 30\.00% = rqvae.min_unique_ratio 60% x the 50\.00% that "
                       r"2\^2 ids for 8 items allow\)"):
        check_not_collapsed(np.array([[0, 0], [1, 1]] * 4), codebook_size=2, min_utilization=0.5,
                            min_unique_ratio=0.6)


def test_no_collapse_no_error() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])  # every code used, every id unique
    check_not_collapsed(codes, codebook_size=2, min_utilization=1.0, min_unique_ratio=1.0)


def test_unique_ratio_floor_alone() -> None:
    codes = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])  # every code used, 2 ids for 4 items
    with pytest.raises(SemanticIdsCollapsed, match=r"2 distinct ids for 4 items \(unique ratio "
                       r"50\.00%, under 60\.00% = rqvae.min_unique_ratio 60%\)"):
        check_not_collapsed(codes, codebook_size=2, min_utilization=0.5, min_unique_ratio=0.6)
    check_not_collapsed(codes, codebook_size=2, min_utilization=0.5, min_unique_ratio=0.5)
