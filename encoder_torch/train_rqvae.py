"""Training the RQ-VAE: standardisation and k-means initialisation, eq. 5 loss, dead-code reseeding.

Schedule: with Sinkhorn assignment (paper 3.2) the first ``sinkhorn_fraction`` of the epochs
assign codes by Sinkhorn, the rest by the nearest code, the rule the ids are read with (eq. 4).
Sinkhorn spreads the batch over every code while the codebooks form; the nearest-code epochs then
move each code to the items that will actually read it. Sinkhorn to the end left codebooks that
the nearest-code lookup reads unevenly: on the MovieLens quick run 71.1% unique ids against 99.2%
after a Sinkhorn half (benchmarks/results/rqvae_utilisation.json).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from encoder_torch.losses import info_nce
from encoder_torch.rqvae import RQVAE
from saviorrec.progress import progress

log = logging.getLogger(__name__)
MAX_FIT_ROWS = 262_144  # rows used for k-means and reseeding (a sample for millions of items)


def _sample(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if len(x) <= MAX_FIT_ROWS:
        return x
    return x[torch.randperm(len(x), generator=generator)[:MAX_FIT_ROWS].to(x.device)]


@torch.no_grad()
def kmeans_init(model: RQVAE, x: torch.Tensor, *, seed: int) -> None:
    """The input standardisation from x, then each codebook <- faiss k-means centroids of the
    residuals left by the levels before it."""
    k = model.config.codebook_size
    if len(x) < k:
        raise ValueError(f"k-means init needs at least K={k} items, got {len(x)}")
    model.fit_input_scaling(x)
    residual = model.encode(x).float()
    for level in range(model.config.levels):
        # min_points_per_centroid=1: the catalogue's items per code are checked by the RQ stage
        # (rq_stage.codebook_plan); faiss would otherwise warn below 39 points per centroid.
        kmeans = faiss.Kmeans(residual.shape[1], k, niter=25, seed=seed + level, verbose=False,
                              min_points_per_centroid=1)
        kmeans.train(np.ascontiguousarray(residual.cpu().numpy()))
        model.codebooks[level] = torch.from_numpy(kmeans.centroids).to(model.codebooks)
        residual = residual - model.codebooks[level][model.assign(residual, level, balanced=False)]


@torch.no_grad()
def reseed_dead_codes(model: RQVAE, x: torch.Tensor, *, generator: torch.Generator) -> list[int]:
    """Codes no row of ``x`` takes (nearest-code) are moved onto random residuals of that level.
    Returns the number reseeded per level."""
    residual = model.encode(x).float()
    reseeded = []
    for level in range(model.config.levels):
        counts = torch.bincount(model.assign(residual, level, balanced=False),
                                minlength=model.config.codebook_size)
        dead = (counts == 0).nonzero().squeeze(1)
        if len(dead):
            pick = torch.randperm(len(residual), generator=generator)[:len(dead)].to(x.device)
            model.codebooks[level, dead[:len(pick)]] = residual[pick]
        reseeded.append(len(dead))
        residual = residual - model.codebooks[level][model.assign(residual, level, balanced=False)]
    return reseeded


def train_rqvae(*, model: RQVAE, x: torch.Tensor, pairs: np.ndarray, epochs: int, batch_size: int,
                lr: float, lambda_recon: float, lambda_commit: float, temperature: float,
                dead_code_every: int, seed: int, kmeans: bool = True, sinkhorn_fraction: float = 0.5,
                desc: str = "rqvae") -> list[float]:
    """Train in place on item embeddings x [n, d] (on the model's device) and co-click ``pairs``
    [P, 2] (rows of x). Loss (eq. 5): lambda0 * MSE + lambda1 * commit + InfoNCE(x_hat_a, x_hat_b),
    the MSE and the InfoNCE on standardised vectors. ``kmeans=False``: the model arrives
    initialised (kmeans_init, or a checkpoint). With ``model.config.assignment == "sinkhorn"`` the
    first ``sinkhorn_fraction`` of the epochs assign by Sinkhorn (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    if kmeans:
        kmeans_init(model, _sample(x, generator), seed=seed)
    pairs_t = torch.as_tensor(np.asarray(pairs, dtype=np.int64)).reshape(-1, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, len(x) // batch_size)
    sinkhorn_epochs = round(epochs * sinkhorn_fraction) if model.config.assignment == "sinkhorn" else 0
    history = []
    model.train()
    for epoch in progress(range(epochs), desc=desc, unit="epoch", disable=epochs < 5):
        balanced = epoch < sinkhorn_epochs
        order = torch.randperm(len(x), generator=generator).to(x.device)
        total = 0.0
        for step in range(steps):
            batch = x[order[step * batch_size:(step + 1) * batch_size]]
            out = model(batch, balanced=balanced)
            loss = lambda_recon * F.mse_loss(model.standardise(out.x_hat), model.standardise(batch)) \
                + lambda_commit * out.commit_loss
            if len(pairs_t) >= 2:
                pick = pairs_t[torch.randint(len(pairs_t), (min(batch_size, len(pairs_t)),),
                                             generator=generator)].to(x.device)
                x_hat = model(torch.cat([x[pick[:, 0]], x[pick[:, 1]]]), balanced=balanced).x_hat
                ha, hb = model.standardise(x_hat).chunk(2)
                loss = loss + info_nce(ha, hb, temperature=temperature, a_ids=pick[:, 0], b_ids=pick[:, 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(total / steps)
        if (epoch + 1) % dead_code_every == 0 and epoch + 1 < epochs:
            dead = reseed_dead_codes(model, _sample(x, generator), generator=generator)
            if any(dead):
                log.info("%s epoch %d: reseeded dead codes per level %s", desc, epoch + 1, dead)
    model.eval()
    return history
