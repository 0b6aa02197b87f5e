"""InfoNCE (eq. 3) against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from encoder_torch.losses import info_nce, pair_log_q

torch.set_num_threads(1)


def test_info_nce_two_pairs_by_hand() -> None:
    # unit vectors: a0=(1,0), a1=(0,1); b0=(1,0), b1=(0.6,0.8)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # b0 has norm 2: cosine must normalise it
    t = 0.5
    # cos(a_i, b_k): [[1, 0.6], [0, 0.8]] / t = [[2, 1.2], [0, 1.6]]
    row0 = -(2 - math.log(math.exp(2) + math.exp(1.2)))
    row1 = -(1.6 - math.log(math.exp(0) + math.exp(1.6)))
    one_way = (row0 + row1) / 2
    assert info_nce(a, b, temperature=t, symmetric=False).item() == pytest.approx(one_way, abs=1e-6)
    # b -> a: columns of the same matrix: [[2, 0], [1.2, 1.6]]
    col0 = -(2 - math.log(math.exp(2) + math.exp(0)))
    col1 = -(1.6 - math.log(math.exp(1.2) + math.exp(1.6)))
    both = (one_way + (col0 + col1) / 2) / 2
    assert info_nce(a, b, temperature=t).item() == pytest.approx(both, abs=1e-6)


def test_duplicate_item_is_not_a_negative() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # both pairs share partner item 7
    # without ids: row0 logits [0, 0] -> log 2; row1 [1, 1] -> log 2
    assert info_nce(a, b, temperature=1.0, symmetric=False).item() == pytest.approx(math.log(2))
    # with ids the other copy of item 7 is masked: each row has only its positive -> loss 0
    ids = torch.tensor([7, 7])
    masked = info_nce(a, b, temperature=1.0, b_ids=ids, symmetric=False)
    assert masked.item() == pytest.approx(0.0, abs=1e-6)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="must be the same"):
        info_nce(torch.zeros(2, 3), torch.zeros(3, 3), temperature=0.1)


def test_log_q_correction_by_hand() -> None:
    # the two-pair case above, logits [[2, 1.2], [0, 1.6]]; b0 drawn with q 0.75, b1 with 0.25
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.6, 0.8]])
    lq = torch.log(torch.tensor([0.75, 0.25]))
    c0, c1 = math.log(0.75), math.log(0.25)
    row0 = -((2 - c0) - math.log(math.exp(2 - c0) + math.exp(1.2 - c1)))
    row1 = -((1.6 - c1) - math.log(math.exp(0 - c0) + math.exp(1.6 - c1)))
    got = info_nce(a, b, temperature=0.5, symmetric=False, b_log_q=lq).item()
    assert got == pytest.approx((row0 + row1) / 2, abs=1e-6)
    # a popular negative (b0, for row 1) weighs less after the correction: row 1's loss falls
    plain_row1 = -(1.6 - math.log(math.exp(0) + math.exp(1.6)))
    assert row1 < plain_row1


def test_uniform_log_q_changes_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    flat = torch.full((6,), math.log(1 / 6))
    assert info_nce(a, b, temperature=0.1, a_log_q=flat, b_log_q=flat).item() == pytest.approx(
        info_nce(a, b, temperature=0.1).item(), abs=1e-5)


def test_pair_log_q_is_each_items_share_of_pair_sides() -> None:
    pairs = torch.tensor([[0, 1], [0, 2], [3, 0]])  # item 0: 3 of 6 sides; 1, 2, 3: 1 each; 4: none
    q = pair_log_q(pairs, 5).exp()
    assert q.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6, 0.0])
