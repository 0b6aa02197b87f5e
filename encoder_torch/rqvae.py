"""RQ-VAE (paper eq. 4-5): an MLP encoder, L residual codebooks of K codes, an MLP decoder.

r_1 = Enc(s(z)); c_l = assign(r_l, C_l); r_{l+1} = r_l - C_l[c_l]; z_hat = s^-1(Dec(sum_l C_l[c_l])).
assign is Sinkhorn (balanced) when the caller asks for it (train_rqvae, in the Sinkhorn phase of
training), the nearest code otherwise and always at inference (eq. 4). The straight-through
estimator passes the decoder's gradient to the encoder.

s standardises the input: s(z) = (z - mean) / scale, the catalogue's mean z and the root mean
square distance to it (``fit_input_scaling``; buffers saved in the checkpoint). The SaviorEnc z
are unit vectors that can share one direction: on the MovieLens quick run the mean z had norm
0.999 and the items lay within 0.04 (rms) of it, and the RQ-VAE trained on them used one to four
codes per level (0.13-0.15% unique ids, Sinkhorn and argmin alike). Standardisation alone, the
training otherwise unchanged, gave the same z 86.7% (Sinkhorn) and 99.8% (argmin) unique ids over
150 epochs (benchmarks/results/rqvae_utilisation.json, exploration). One scale for all
dimensions keeps the geometry of z: distances are only rescaled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from encoder_torch.sinkhorn import sinkhorn_assign
from saviorrec.config import EncoderConfig, RQVAEConfig

# Code vectors are gathered with F.embedding, not ``codebooks[level][code]``: the backward of
# advanced indexing is index_put_(accumulate=True), which on CPU with more than one thread (and
# >= 32768 elements, e.g. a batch of 1024 x 64) adds with atomic float adds in thread order, so
# the codebook gradient, hence the trained RQ-VAE, changed from run to run under the same seed.
# F.embedding gives the same values and its CPU backward sums each code's rows in batch order.


_ENCODER, _RQ = EncoderConfig(), RQVAEConfig()  # the run config's defaults, each defined there once
RUN_DECIDES = ("input_dim", "codebook_size", "assignment")  # not read from the rqvae section as is


@dataclass(frozen=True)
class RQVAEModelConfig:
    """What the model needs of the run's ``rqvae`` section (saviorrec.config.RQVAEConfig, where
    every default and its reason live), and three values a run decides: ``input_dim`` (the
    encoder's d), ``codebook_size`` (K of the RQ stage's plan for the catalogue) and
    ``assignment`` (training: "sinkhorn" | "argmin"; inference is always the nearest code).
    Saved in every checkpoint; :meth:`from_run` builds it from a run's config."""

    input_dim: int = _ENCODER.dim
    latent_dim: int = _RQ.latent_dim
    hidden: tuple[int, ...] = _RQ.hidden
    levels: int = _RQ.levels  # L
    codebook_size: int = _RQ.codebook_size  # K
    assignment: str = _RQ.assignment
    sinkhorn_epsilon: float = _RQ.sinkhorn_epsilon
    sinkhorn_iters: int = _RQ.sinkhorn_iters
    beta: float = _RQ.beta

    def __post_init__(self) -> None:
        if self.assignment not in ("sinkhorn", "argmin"):
            raise ValueError(f"assignment={self.assignment!r}: use 'sinkhorn' or 'argmin'")

    @classmethod
    def from_run(cls, rc: RQVAEConfig, *, input_dim: int, codebook_size: int,
                 assignment: str) -> RQVAEModelConfig:
        """The model config of a run's ``rqvae`` section with the values the run decided."""
        shared = {f.name: getattr(rc, f.name) for f in fields(cls) if f.name not in RUN_DECIDES}
        return cls(**shared, input_dim=input_dim, codebook_size=codebook_size,
                   assignment=assignment)


@dataclass
class RQOutput:
    x_hat: torch.Tensor  # [B, input_dim] reconstruction
    codes: torch.Tensor  # [B, L] int64
    latent: torch.Tensor  # [B, latent_dim] r_1 = Enc(s(x))
    quantized: torch.Tensor  # [B, latent_dim] sum_l C_l[c_l]
    commit_loss: torch.Tensor  # scalar: sum over levels of codebook + beta * commitment terms


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, *, config: RQVAEModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = _mlp([c.input_dim, *c.hidden, c.latent_dim])
        self.decoder = _mlp([c.latent_dim, *reversed(c.hidden), c.input_dim])
        self.codebooks = nn.Parameter(torch.randn(c.levels, c.codebook_size, c.latent_dim) * 0.1)
        self.register_buffer("input_mean", torch.zeros(c.input_dim))  # fit_input_scaling
        self.register_buffer("input_scale", torch.ones(()))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Checkpoints saved before standardisation existed load unstandardised (mean 0, scale 1)."""
        state_dict = {"input_mean": torch.zeros_like(self.input_mean),
                      "input_scale": torch.ones_like(self.input_scale), **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def fit_input_scaling(self, x: torch.Tensor) -> None:
        """s(z) = (z - mean) / scale from the items x [n, input_dim]."""
        mean = x.float().mean(dim=0)
        self.input_mean.copy_(mean)
        self.input_scale.copy_((x.float() - mean).square().sum(dim=1).mean().sqrt().clamp_min(1e-12))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, input_dim] -> s(x), the space the encoder reads and the losses are measured in."""
        return (x - self.input_mean) / self.input_scale

    def assign(self, residual: torch.Tensor, level: int, *, balanced: bool) -> torch.Tensor:
        """residual [B, D] -> codes [B] at ``level``: Sinkhorn when ``balanced``, else nearest."""
        cost = torch.cdist(residual.float(), self.codebooks[level].float()).square()  # [B, K]
        if balanced:
            return sinkhorn_assign(cost, epsilon=self.config.sinkhorn_epsilon,
                                   iters=self.config.sinkhorn_iters)
        return cost.argmin(dim=1)

    def quantize(self, latent: torch.Tensor, *, balanced: bool = False) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent [B, D] -> codes [B, L], quantized [B, D], commit loss; Sinkhorn when ``balanced``."""
        residual, quantized = latent, torch.zeros_like(latent)
        codes, commit = [], latent.new_zeros(())
        for level in range(self.config.levels):
            code = self.assign(residual.detach(), level, balanced=balanced)
            vector = F.embedding(code, self.codebooks[level])  # [B, D]; F.embedding: see the note above
            commit = commit + F.mse_loss(vector, residual.detach()) \
                + self.config.beta * F.mse_loss(residual, vector.detach())
            codes.append(code)
            quantized = quantized + vector
            residual = residual - vector.detach()
        return torch.stack(codes, dim=1), quantized, commit

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L] -> sum of their code vectors [B, latent_dim]."""
        levels = torch.arange(self.config.levels, device=codes.device)
        flat = self.codebooks.flatten(0, 1)  # [L * K, D]: row level * K + code
        return F.embedding(codes + levels * self.config.codebook_size, flat).sum(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L] -> reconstruction [B, input_dim]."""
        return self.decoder(self.decode_codes(codes)) * self.input_scale + self.input_mean

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, input_dim] -> latent r_1 [B, latent_dim]."""
        return self.encoder(self.standardise(x))

    def forward(self, x: torch.Tensor, *, balanced: bool = False) -> RQOutput:
        """x [B, input_dim] -> RQOutput; codes by Sinkhorn when ``balanced`` (training only)."""
        latent = self.encode(x)
        codes, quantized, commit = self.quantize(latent, balanced=balanced)
        straight_through = latent + (quantized - latent).detach()
        x_hat = self.decoder(straight_through) * self.input_scale + self.input_mean
        return RQOutput(x_hat, codes, latent, quantized, commit)

    @torch.no_grad()
    def semantic_codes(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, input_dim] -> nearest-code ids [B, L] (inference, eq. 4: no balancing)."""
        return self.quantize(self.encode(x))[0]
