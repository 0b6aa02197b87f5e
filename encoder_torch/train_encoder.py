"""Training SaviorEnc on co-click pairs (InfoNCE, in-batch negatives) over cached tower features,
frozen (features.TowerFeatures) or with the towers' tails fine-tuned (finetune.TunedFeatures)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from encoder_torch.features import TowerFeatures
from encoder_torch.finetune import TunedFeatures
from encoder_torch.fusion import SaviorEnc
from encoder_torch.losses import info_nce, pair_log_q
from saviorrec.progress import progress

log = logging.getLogger(__name__)


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    done = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def _param_groups(model: SaviorEnc, features: TowerFeatures | TunedFeatures, *, lr: float,
                  tower_lr_scale: float) -> list[dict]:
    """SaviorEnc's weights at ``lr``; fine-tuned tower weights, if any, at ``lr * tower_lr_scale``."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    tower = [p for p in features.parameters() if p.requires_grad] if isinstance(features, nn.Module) else []
    if tower:
        groups.append({"params": tower, "lr": lr * tower_lr_scale})
    return groups


def train_saviorenc(*, model: SaviorEnc, features: TowerFeatures | TunedFeatures, pairs: np.ndarray,
                    epochs: int, batch_size: int, lr: float, warmup_epochs: float, temperature: float,
                    weight_decay: float, device: torch.device, seed: int, tower_lr_scale: float = 0.1,
                    logq_correction: bool = False, max_steps_per_epoch: int = 0,
                    desc: str = "saviorenc") -> list[float]:
    """Train in place (and the tower tails of TunedFeatures); returns the mean loss of each epoch.
    ``pairs`` [P, 2] are item rows; ``logq_correction``: losses.py's sampling-bias correction;
    ``max_steps_per_epoch`` > 0: at most that many batches of each epoch's permutation."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 co-click pairs for in-batch negatives, got {len(pairs)}")
    generator = torch.Generator().manual_seed(seed)
    pairs_t = torch.from_numpy(np.asarray(pairs, dtype=np.int64))
    log_q = pair_log_q(pairs_t, int(pairs_t.max()) + 1).to(device) if logq_correction else None
    steps_per_epoch = max(1, len(pairs) // batch_size)  # the ragged tail of a permutation is dropped
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    optimizer = torch.optim.AdamW(_param_groups(model, features, lr=lr, tower_lr_scale=tower_lr_scale),
                                  lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=round(warmup_epochs * steps_per_epoch), total=total))
    model.to(device).train()
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(pairs_t), generator=generator)
        losses = []
        bar = progress(range(steps_per_epoch), desc=f"{desc} {epoch + 1}/{epochs}", unit="step",
                   disable=steps_per_epoch < 5, leave=False)
        for step in bar:
            batch = pairs_t[order[step * batch_size:(step + 1) * batch_size]]  # [B, 2]
            rows = torch.cat([batch[:, 0], batch[:, 1]])
            z = model(**vars(features.take(rows, device=device)))
            za, zb = z.chunk(2)
            a_ids, b_ids = batch[:, 0].to(device), batch[:, 1].to(device)
            loss = info_nce(za, zb, temperature=temperature, a_ids=a_ids, b_ids=b_ids,
                            a_log_q=None if log_q is None else log_q[a_ids],
                            b_log_q=None if log_q is None else log_q[b_ids])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append(float(np.mean(losses)))
        log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, epochs, history[-1])
    return history


@torch.no_grad()
def embed_items(*, model: SaviorEnc, features: TowerFeatures | TunedFeatures, batch_size: int,
                device: torch.device) -> np.ndarray:
    """z of every item [n, d] float32 (L2-normalised), in the row order of ``features``."""
    model.to(device).eval()
    out = []
    for start in range(0, len(features), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(features)))
        out.append(model(**vars(features.take(rows, device=device))).float().cpu())
    return torch.cat(out).numpy()
