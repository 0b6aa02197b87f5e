"""Sinkhorn-Knopp balanced assignment: marginals, and balance where argmin collapses."""

from __future__ import annotations

import torch

from encoder_torch.sinkhorn import sinkhorn_assign, sinkhorn_plan

torch.set_num_threads(1)


def test_plan_marginals_are_balanced() -> None:
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(64, 8, generator=g) ** 3  # skewed costs
    q = sinkhorn_plan(cost, epsilon=0.05, iters=200)
    assert torch.allclose(q.sum(1), torch.full((64,), 1 / 64), atol=1e-6)
    assert torch.allclose(q.sum(0), torch.full((8,), 1 / 8), atol=1e-3)
    assert (q >= 0).all()


def test_assignment_spreads_where_argmin_collapses() -> None:
    # every row is nearest to code 0 (cost 0), but rows differ in how much they prefer the rest
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(40, 4, generator=g) + 1.0
    cost[:, 0] = 0.0
    assert torch.bincount(cost.argmin(1), minlength=4).tolist() == [40, 0, 0, 0]
    counts = torch.bincount(sinkhorn_assign(cost, epsilon=0.05, iters=100), minlength=4)
    assert counts.min() >= 8 and counts.max() <= 12  # 10 each, up to rounding of the plan


def test_clear_preference_is_kept() -> None:
    # 4 rows, 4 codes, each row has its own cheapest code: balanced and argmin agree
    cost = torch.ones(4, 4) - torch.eye(4)
    assert sinkhorn_assign(cost, epsilon=0.05, iters=50).tolist() == [0, 1, 2, 3]
