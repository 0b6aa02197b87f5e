"""SaviorEnc (paper eq. 2): z = g_proj(g([f_v(v); f_t(t)])), a multimodal transformer over the
image and text tower tokens, then an MLP projection to d, L2-normalised.

A missing modality (no text, or no image) is replaced by that modality's learned missing token,
so every item gets an embedding. Missing text fields inside a present text are masked out.

Centring (``set_center``): a contrastively trained encoder's outputs share a large common
direction (on the synthetic catalogue the mean of the unit vectors z had norm 0.88, so two items
of different topics still had cosine ~0.8 and topic differences were a small part of every
vector). Subtracting the catalogue's mean and normalising again, the post-processing of "all but
the top" (Mu and Viswanath, ICLR 2018) with its first step only, keeps every direction the items
differ in and removes the one they share. The mean is a buffer saved with the model, so an item
embedded later is centred the same way; zero (the default, and every checkpoint saved before it)
leaves z as it was.

Tower skip (``tower_skip``, encoder.tower_skip): z = normalise(P (o - mean) + head(fusion)), o the
off-the-shelf vector (features.pool_towers), P [d, 384 + 1280] initialised to the catalogue's top
d principal directions of o (scaled to unit RMS norm) and the head's last layer to zero, so
training starts from the off-the-shelf embedding projected to d and co-click pairs move it from
there. Without it a freshly initialised transformer must rediscover from co-click pairs alone what
the towers already know: on the quick MovieLens world (1,255 pairs) the trained encoder retrieved
next clicks worse than the towers it reads (Hit@30 valid ~0.03 against 0.053, issue 27). This is
the residual connection of adapter tuning (Houlsby et al., ICML 2019: a new block starts as the
identity) applied to the fusion model as a whole; P and the transformer train together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from encoder_torch.features import pool_towers
from saviorrec.config import EncoderConfig

if TYPE_CHECKING:
    from saviorrec.config import Config

MODALITIES = ("text", "image")
_ENCODER = EncoderConfig()


@dataclass(frozen=True)
class SaviorEncConfig:
    text_dim: int = 384  # MiniLM width
    image_dim: int = 1280  # EfficientNet-Lite0 head width
    text_tokens: int = 4  # title, genres, tags, overview
    image_tokens: int = 5  # global average + 2x2 grid
    modalities: tuple[str, ...] = MODALITIES  # ("text",) / ("image",): unimodal ablations
    # defaults of the run config (encoder.fusion_width, fusion_layers, fusion_heads, dim)
    width: int = _ENCODER.fusion_width  # transformer width
    layers: int = _ENCODER.fusion_layers  # paper: a 3-layer multimodal transformer
    heads: int = _ENCODER.fusion_heads
    dim: int = _ENCODER.dim  # d of z (paper: 64)
    dropout: float = 0.1
    # False here (not the run config's default): checkpoints saved before the skip existed have
    # no such key and must load as the model they were.
    tower_skip: bool = False

    def __post_init__(self) -> None:
        if not self.modalities or set(self.modalities) - set(MODALITIES):
            raise ValueError(f"modalities={self.modalities!r}: use a non-empty subset of {MODALITIES}")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")


class _Modality(nn.Module):
    """Tokens [B, T, in] -> [B, T, width] plus a key mask; absent rows get the missing token."""

    def __init__(self, *, in_dim: int, tokens: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, width))
        self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.02)  # slot + modality
        self.missing = nn.Parameter(torch.randn(width) * 0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor,
                present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(tokens) + self.position  # [B, T, W]
        first = torch.zeros_like(mask)
        first[:, 0] = True
        absent = ~present[:, None]  # [B, 1]
        x = torch.where((absent & first)[..., None], self.missing.to(x.dtype) + self.position[:, :1], x)
        keep = torch.where(absent, first, mask)  # absent rows keep only the missing token
        return x, keep


class SaviorEnc(nn.Module):
    def __init__(self, *, config: SaviorEncConfig) -> None:
        super().__init__()
        self.config = c = config
        self.text = _Modality(in_dim=c.text_dim, tokens=c.text_tokens, width=c.width)
        self.image = _Modality(in_dim=c.image_dim, tokens=c.image_tokens, width=c.width)
        self.cls = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, c.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, c.dim))
        self.register_buffer("center", torch.zeros(c.dim))  # set_center: the catalogue's mean z
        self._centred = False  # center is not zero: forward subtracts it and normalises again
        if c.tower_skip:
            self.skip = nn.Linear(c.text_dim + c.image_dim, c.dim, bias=False)
            self.register_buffer("skip_mean", torch.zeros(c.text_dim + c.image_dim))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    @torch.no_grad()
    def init_skip(self, features, *, batch_size: int) -> None:
        """P and the mean from the off-the-shelf vectors of every item in ``features``
        (TowerFeatures or TunedFeatures; the vectors of this model's modalities only): P's rows
        are the top-d eigenvectors of their covariance, each with its largest entry positive (a
        deterministic sign), divided by the root of the sum of the top-d eigenvalues so that the
        projected vectors have unit RMS norm."""
        if not self.config.tower_skip:
            raise ValueError("init_skip on a SaviorEnc built with tower_skip=False")
        width = self.skip.in_features
        total, gram, n = torch.zeros(width, dtype=torch.float64), torch.zeros(width, width, dtype=torch.float64), 0
        for start in range(0, len(features), batch_size):
            part = features.take(torch.arange(start, min(start + batch_size, len(features))))
            o = self._pooled(part.text, part.text_mask, part.image, part.image_present).double().cpu()
            total += o.sum(0)
            gram += o.T @ o
            n += len(o)
        if n < 2:
            raise ValueError(f"init_skip needs at least 2 items, got {n}")
        mean = total / n
        values, vectors = torch.linalg.eigh(gram / n - torch.outer(mean, mean))  # ascending
        top_values, top = values.flip(0)[:self.config.dim].clamp(min=0), vectors.flip(1)[:, :self.config.dim]
        sign = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
        scale = top_values.sum().sqrt().clamp(min=1e-12)
        self.skip.weight.copy_((top * sign).T / scale)
        self.skip_mean.copy_(mean)

    def _pooled(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                image_present: torch.Tensor) -> torch.Tensor:
        """The off-the-shelf vector over this model's modalities (an absent one reads as zero)."""
        if "text" not in self.config.modalities:
            text_mask = torch.zeros_like(text_mask)
        if "image" not in self.config.modalities:
            image_present = torch.zeros_like(image_present)
        return pool_towers(text, text_mask, image, image_present)

    def set_center(self, mean_z: torch.Tensor) -> None:
        """Centre z on ``mean_z`` [d], the mean of the uncentred z over the catalogue."""
        self.center.copy_(mean_z.to(self.center))
        self._centred = bool(self.center.any())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Checkpoints saved before centring existed have no ``center``: they load uncentred."""
        if "center" not in state_dict:
            state_dict = {**state_dict, "center": torch.zeros_like(self.center)}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._centred = bool(self.center.any())
        return result

    def forward(self, *, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                image_present: torch.Tensor) -> torch.Tensor:
        """text [B, Tt, 384], text_mask [B, Tt], image [B, Ti, 1280], image_present [B] -> z [B, d]."""
        batch = text.shape[0] if "text" in self.config.modalities else image.shape[0]
        parts = [self.cls.expand(batch, -1, -1)]
        keeps = [torch.ones(batch, 1, dtype=torch.bool, device=self.cls.device)]
        if "text" in self.config.modalities:
            x, keep = self.text(text, text_mask, text_mask.any(dim=1))
            parts.append(x)
            keeps.append(keep)
        if "image" in self.config.modalities:
            x, keep = self.image(image, image_present[:, None].expand(-1, image.shape[1]), image_present)
            parts.append(x)
            keeps.append(keep)
        h = self.fusion(torch.cat(parts, 1), src_key_padding_mask=~torch.cat(keeps, 1))
        out = self.head(self.norm(h[:, 0]))
        if self.config.tower_skip:
            out = out + self.skip(self._pooled(text, text_mask, image, image_present) - self.skip_mean)
        z = F.normalize(out, dim=-1)
        # A zero centre leaves z bit for bit as it was (normalising a unit vector again moves it
        # by up to ~2e-7, enough to change a sensitive RQ-VAE's codes).
        return F.normalize(z - self.center, dim=-1) if self._centred else z


def encoder_model_config(cfg: Config, modalities: tuple[str, ...]) -> SaviorEncConfig:
    """The fusion model's sizes from the run config (``encoder.*``)."""
    ec = cfg.encoder
    return SaviorEncConfig(modalities=modalities, width=ec.fusion_width, layers=ec.fusion_layers,
                           heads=ec.fusion_heads, dim=ec.dim, dropout=ec.fusion_dropout,
                           tower_skip=ec.tower_skip)
