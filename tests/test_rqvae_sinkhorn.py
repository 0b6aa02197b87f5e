"""Sinkhorn-Knopp balanced assignment: marginals, balance where argmin collapses, scale-free
epsilon, robustness to far residuals."""

from __future__ import annotations

import torch

from encoder_torch.sinkhorn import sinkhorn_assign, sinkhorn_plan

torch.set_num_threads(1)


def test_plan_marginals_are_balanced() -> None:
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(64, 8, generator=g) ** 3  # skewed costs
    q = sinkhorn_plan(cost, epsilon=1.0, iters=200)
    assert torch.allclose(q.sum(1), torch.full((64,), 1 / 64), atol=1e-6)
    assert torch.allclose(q.sum(0), torch.full((8,), 1 / 8), atol=1e-3)
    assert (q >= 0).all()


def test_assignment_spreads_where_argmin_collapses() -> None:
    # every row is nearest to code 0, but rows differ in how much they prefer the rest
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(40, 4, generator=g) + 1.0
    cost[:, 0] = 0.5
    assert torch.bincount(cost.argmin(1), minlength=4).tolist() == [40, 0, 0, 0]
    counts = torch.bincount(sinkhorn_assign(cost, epsilon=0.05, iters=200), minlength=4)
    assert counts.min() >= 8 and counts.max() <= 12  # 10 each, up to rounding of the plan


def test_clear_preference_is_kept() -> None:
    # 4 rows, 4 codes, each row has its own cheapest code: balanced and argmin agree
    cost = torch.ones(4, 4) - torch.eye(4)
    assert sinkhorn_assign(cost, epsilon=0.05, iters=50).tolist() == [0, 1, 2, 3]


def test_epsilon_is_relative_to_the_typical_nearest_cost() -> None:
    # the same residuals in other units get the same codes
    g = torch.Generator().manual_seed(2)
    cost = torch.rand(96, 6, generator=g) ** 2
    codes = sinkhorn_assign(cost, epsilon=0.03, iters=50)
    for factor in (2.0**-12, 2.0**10):  # powers of two: the scaled costs are exact
        assert torch.equal(sinkhorn_assign(cost * factor, epsilon=0.03, iters=50), codes)


def test_a_far_residual_does_not_blur_the_others() -> None:
    # rows 2i and 2i + 1 prefer code i by 0.1 (cost 1.0 against 1.1); one row lies 1000 away from
    # every code. Scaled by the batch's cost range (the old rule), 0.1 was 1e-4 of the range and
    # the plan almost uniform; scaled by the median nearest-code cost, the preferences hold.
    cost = torch.full((9, 4), 1.1)
    cost[torch.arange(8), torch.arange(8) // 2] = 1.0
    cost[8] = 1000.0
    codes = sinkhorn_assign(cost, epsilon=0.03, iters=100)
    assert codes[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
