"""The RQ stage's codebook plan: K adapts to the catalogue (enough prefixes, enough items per code)."""

from __future__ import annotations

import pytest

from encoder_torch.rq_stage import CodebookPlan, codebook_plan

RULE = {"prefixes_per_item": 16.0, "min_items_per_code": 4, "batch_items_per_code": 4}


def _expected_k(items: int, levels: int, configured: int) -> tuple[int, bool]:
    """(K, whether the levels are too few), by enumeration rather than logarithms: the smallest
    power of two whose first L-1 levels give 16 prefixes per item, the largest one the catalogue
    fills with 4 items a code, the configured K between them; the configured K when the first
    exceeds the second."""
    powers = [2 ** j for j in range(1, 30)]
    room = next(k for k in powers if k ** max(levels - 1, 1) >= 16 * items)
    most = max((k for k in powers if k * 4 <= items), default=1)
    return (configured, True) if room > most else (min(max(configured, room), most), False)


@pytest.mark.parametrize(("items", "levels", "configured", "k", "batch"), [
    (9_742, 4, 64, 64, 1024),  # MovieLens: 32^3 = 32,768 < 16 x 9,742 <= 64^3; unchanged
    (5_266, 4, 64, 64, 1024),  # its 15% quick subsample: 32^3 < 84,256 <= 64^3
    (5_000, 3, 64, 512, 2048),  # synthetic: 256^2 = 65,536 < 80,000 <= 512^2; batch 4 x 512
    (1_000, 3, 64, 128, 1000),  # 64^2 < 16,000 <= 128^2; 1000 / 4 = 250 items allow 128
    (1_000_000, 3, 64, 4096, 16384),  # 4096^2 = 16.8M >= 16M; batch 4 x 4096
    (1_000_000, 4, 64, 256, 1024),  # 256^3 = 16.8M >= 16M
    (1_000_000, 8, 2048, 2048, 8192),  # the paper's L=8, K=2048 fits a million items
    (1_000, 8, 2048, 128, 1000),  # ... but not a thousand: lowered to 1000 / 4 -> 128
])
def test_codebook_size_by_hand(items: int, levels: int, configured: int, k: int, batch: int) -> None:
    plan = codebook_plan(items=items, levels=levels, codebook_size=configured, batch_size=1024, **RULE)
    assert plan == CodebookPlan(codebook_size=k, batch_size=batch)
    assert (k, False) == _expected_k(items, levels, configured)


@pytest.mark.parametrize("items", [5, 40, 333, 1_000, 4_096, 5_000, 77_777, 1_000_000])
@pytest.mark.parametrize("levels", [2, 3, 4, 5])
@pytest.mark.parametrize("configured", [16, 64, 300])
def test_codebook_size_matches_enumeration(items: int, levels: int, configured: int) -> None:
    k, too_few = _expected_k(items, levels, configured)
    plan = codebook_plan(items=items, levels=levels, codebook_size=configured, batch_size=1024, **RULE)
    assert plan.codebook_size == k
    assert (plan.too_few_levels is not None) == too_few
    assert plan.batch_size == min(items, max(1024, 4 * k))
    if not too_few:
        assert k ** max(levels - 1, 1) >= 16 * items and 4 * k <= items


def test_too_few_levels_keep_the_configured_k_and_say_so() -> None:
    # 600 items at L=2: K >= 16,384 (K^1 >= 16 x 600 = 9,600) but 600 items fill at most K = 128;
    # 3 levels would do: 128^2 = 16,384 >= 9,600
    plan = codebook_plan(items=600, levels=2, codebook_size=16, batch_size=1024, **RULE)
    assert plan.codebook_size == 16 and plan.batch_size == 600
    assert plan.too_few_levels == (
        "600 items at rqvae.levels=2: K^1 >= rqvae.prefixes_per_item (16) x items needs "
        "K >= 16384, but the catalogue fills at most K = 128 (rqvae.min_items_per_code=4); K stays "
        "16 and ids will collide; rqvae.levels >= 3 would give them room")
