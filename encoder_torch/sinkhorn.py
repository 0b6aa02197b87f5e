"""Balanced code assignment by Sinkhorn-Knopp optimal transport (paper 3.2, [39]).

The batch's residuals [B, D] are spread over K codes with (approximately) equal mass B/K each,
instead of each row taking its nearest code: the transport plan Q [B, K] with row sums 1/B and
column sums 1/K maximises <Q, -cost> + epsilon * H(Q). Each row then takes its plan's argmax.
Costs are centred and scaled to [-1, 1] first so epsilon is scale-free; the scaling vectors are
iterated in float64 (two matrix-vector products per iteration).
"""

from __future__ import annotations

import torch


def sinkhorn_plan(cost: torch.Tensor, *, epsilon: float, iters: int) -> torch.Tensor:
    """cost [B, K] -> transport plan Q [B, K] (rows sum to 1/B exactly, columns to ~1/K)."""
    cost = cost.double()
    lo, hi = cost.min(), cost.max()
    scaled = (cost - (hi + lo) / 2) / ((hi - lo) / 2).clamp_min(1e-12)  # [-1, 1]
    # Q = diag(u) G diag(v), G = exp(-scaled / eps); each row's shift cancels into u, and float64
    # holds G's range (>= exp(-2 / eps)) for the epsilons used here.
    gibbs = torch.exp(-(scaled - scaled.min(dim=1, keepdim=True).values) / epsilon)  # [B, K]
    rows, cols = cost.shape
    v = torch.ones(cols, dtype=gibbs.dtype, device=gibbs.device)
    for _ in range(iters):
        u = (1.0 / rows) / (gibbs @ v).clamp_min(1e-300)
        v = (1.0 / cols) / (gibbs.T @ u).clamp_min(1e-300)
    u = (1.0 / rows) / (gibbs @ v).clamp_min(1e-300)
    return (u[:, None] * gibbs * v[None, :]).float()


@torch.no_grad()
def sinkhorn_assign(cost: torch.Tensor, *, epsilon: float, iters: int) -> torch.Tensor:
    """cost [B, K] -> codes [B] (int64), balanced over the K codes."""
    return sinkhorn_plan(cost, epsilon=epsilon, iters=iters).argmax(dim=1)
