"""Balanced code assignment by Sinkhorn-Knopp optimal transport (paper 3.2, [39]).

The batch's residuals [B, D] are spread over K codes with (approximately) equal mass B/K each,
instead of each row taking its nearest code: the transport plan Q [B, K] with row sums 1/B and
column sums 1/K maximises <Q, -cost> + epsilon * H(Q). Each row then takes its plan's argmax.
Computed in log space; costs are centred and scaled to [-1, 1] first so epsilon is scale-free.
"""

from __future__ import annotations

import math

import torch


def sinkhorn_plan(cost: torch.Tensor, *, epsilon: float, iters: int) -> torch.Tensor:
    """cost [B, K] -> transport plan Q [B, K] (rows sum to 1/B exactly, columns to ~1/K)."""
    cost = cost.float()
    lo, hi = cost.min(), cost.max()
    scaled = (cost - (hi + lo) / 2) / ((hi - lo) / 2).clamp_min(1e-12)  # [-1, 1]
    log_q = -scaled / epsilon
    rows, cols = cost.shape
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(cols)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(rows)
    return log_q.exp()


@torch.no_grad()
def sinkhorn_assign(cost: torch.Tensor, *, epsilon: float, iters: int) -> torch.Tensor:
    """cost [B, K] -> codes [B] (int64), balanced over the K codes."""
    return sinkhorn_plan(cost, epsilon=epsilon, iters=iters).argmax(dim=1)
