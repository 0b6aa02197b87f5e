"""InfoNCE on co-click pairs with in-batch negatives (paper eq. 3).

For pair i = (a_i, b_i): loss_i = -log exp(s(a_i, b_i)/tau) / sum_k exp(s(a_i, b_k)/tau), s the
cosine similarity, k over the partners of every pair in the batch (CLIP-style). ``symmetric``
averages it with the same loss with a and b swapped. A negative b_k that is the same item as the
positive b_i (an item in two pairs of one batch) is masked out: it is not a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_logits(sim: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    if ids is None:
        return sim
    same = ids[None, :] == ids[:, None]  # [B, B]: column k is the same item as the positive i
    same.fill_diagonal_(False)
    return sim.masked_fill(same, float("-inf"))


def info_nce(a: torch.Tensor, b: torch.Tensor, *, temperature: float, a_ids: torch.Tensor | None = None,
             b_ids: torch.Tensor | None = None, symmetric: bool = True) -> torch.Tensor:
    """Mean InfoNCE of row-aligned pairs a [B, d], b [B, d]; ids [B] (optional) mask duplicates."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must be the same [B, d]")
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # [B, B]
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(_masked_logits(sim, b_ids), target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(_masked_logits(sim.T, a_ids), target))
    return loss
