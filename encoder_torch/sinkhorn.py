"""Balanced code assignment by Sinkhorn-Knopp optimal transport (paper 3.2, [39]).

The batch's residuals [B, D] are spread over K codes with (approximately) equal mass B/K each,
instead of each row taking its nearest code: the transport plan Q [B, K] with row sums 1/B and
column sums 1/K maximises <Q, -cost> + epsilon * H(Q). Q = diag(u) G diag(v) with the Gibbs
kernel G = exp(-cost / epsilon), so a row's argmax of Q is argmin_k (cost_k - epsilon * log v_k):
its nearest code once each code is given a price, epsilon * log v_k, that balances the batch.

Costs are divided by the batch's median nearest-code cost first, so epsilon is a fraction of the
typical quantisation error, whatever the scale of the residuals and whatever a few far residuals
cost. (Scaling by the batch's cost range, as this module did before, let far residuals widen the
range until the plan was nearly uniform: rows then took codes almost at random.) The scaling vectors are iterated in float64, two matrix-vector
products per iteration.
"""

from __future__ import annotations

import torch


def _gibbs(cost: torch.Tensor, epsilon: float) -> torch.Tensor:
    """cost [B, K] -> G [B, K] in float64, each row's maximum 1."""
    cost = cost.double()
    nearest = cost.min(dim=1, keepdim=True).values  # [B, 1]
    unit = nearest.median().clamp_min(1e-6 * cost.mean() + 1e-12)  # the typical nearest-code cost
    # Each row's shift cancels into u; float64 holds exp(-x / eps) down to x ~ 700 eps, and a
    # code farther than that from every row of the batch gets no mass, as it should.
    scaled = (cost - nearest) / unit
    return torch.exp(-scaled / epsilon)


def sinkhorn_plan(cost: torch.Tensor, *, epsilon: float, iters: int) -> torch.Tensor:
    """cost [B, K] -> transport plan Q [B, K] (rows sum to 1/B exactly, columns to ~1/K)."""
    gibbs = _gibbs(cost, epsilon)
    rows, cols = gibbs.shape
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
