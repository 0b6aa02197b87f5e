"""InfoNCE on co-click pairs with in-batch negatives (paper eq. 3).

For pair i = (a_i, b_i): loss_i = -log exp(s(a_i, b_i)/tau) / sum_k exp(s(a_i, b_k)/tau), s the
cosine similarity, k over the partners of every pair in the batch (CLIP-style). ``symmetric``
averages it with the same loss with a and b swapped. A negative b_k that is the same item as the
positive b_i (an item in two pairs of one batch) is masked out: it is not a negative.

Sampling-bias correction (Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling for
large corpus item recommendations"): in-batch negatives are drawn in proportion to how often an
item appears in the pairs, so popular items are pushed away as negatives more often than their
share of true next clicks warrants. With ``a_log_q``/``b_log_q`` (the log of each batch item's
sampling probability) every logit of column k is lowered by log q_k, the positive's included:
the softmax then estimates the full-catalogue one, not the popularity-weighted one.
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


def _corrected(sim: torch.Tensor, log_q: torch.Tensor | None) -> torch.Tensor:
    return sim if log_q is None else sim - log_q[None, :]  # column k lowered by log q_k


def info_nce(a: torch.Tensor, b: torch.Tensor, *, temperature: float, a_ids: torch.Tensor | None = None,
             b_ids: torch.Tensor | None = None, symmetric: bool = True,
             a_log_q: torch.Tensor | None = None, b_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE of row-aligned pairs a [B, d], b [B, d]; ids [B] (optional) mask duplicates;
    log_q [B] (optional) the sampling-bias correction of the module docstring."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must be the same [B, d]")
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # [B, B]
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(_masked_logits(_corrected(sim, b_log_q), b_ids), target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(_masked_logits(_corrected(sim.T, a_log_q), a_ids), target))
    return loss


def pair_log_q(pairs: torch.Tensor, n_items: int) -> torch.Tensor:
    """log of each item row's share of the pairs' sides [n_items] (float32; -inf for no side):
    the probability that a uniformly drawn pair side is that item, as in-batch sampling draws."""
    counts = torch.bincount(pairs.reshape(-1), minlength=n_items).float()
    return torch.log(counts / counts.sum())
