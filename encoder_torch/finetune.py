"""Fine-tuning the towers' last layers (``encoder.finetune_text_layers`` = k, ``encoder.finetune_image``)
over the cached output of their frozen heads.

On each batch of item rows only the tails run (towers.TextTail, towers.ImageTail): the last k
MiniLM layers over the cached hidden states of the batch's distinct field texts, then the mean
pooling; EfficientNet-Lite0's last stage and head over the cached maps of the batch's images,
then the token pooling. Their outputs replace the frozen tokens SaviorEnc reads, so one training
loop and one embedding function (train_encoder.py) serve the frozen and the fine-tuned towers.

The tails run in inference mode even while training: BatchNorm keeps its ImageNet statistics
(batches of a few hundred 5x5 maps would give noisy ones) and dropout and drop-connect are off;
only their weights move, at ``encoder.lr * encoder.finetune_lr_scale``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from encoder_torch.cache import image_maps, image_tokens, text_states, text_tokens
from encoder_torch.features import ImageMaps, TextStates, TowerFeatures
from encoder_torch.towers import (
    IMAGE_DIM,
    IMAGE_TOKENS,
    TEXT_DIM,
    TEXT_TOKENS,
    ImageTail,
    ImageTower,
    TextTail,
    TextTower,
    check_text_layers,
    text_tower_layers,
)


def _placeholder(*shape: int) -> torch.Tensor:
    """Zeros of ``shape`` without the memory (stride 0): the tokens a tail's output replaces."""
    return torch.zeros(()).expand(*shape)


@dataclass
class TuneInputs:
    """What fine-tuning reads, built once: ``base`` has the masks and the frozen tokens of a tower
    that is not fine-tuned; a fine-tuned tower has its head's cached output and pretrained tail."""

    base: TowerFeatures
    text_states: TextStates | None = None
    text_tail: TextTail | None = None
    image_maps: ImageMaps | None = None
    image_tail: ImageTail | None = None


class TunedFeatures(nn.Module):
    """Item rows -> SaviorEnc's input tokens, through fresh copies of the pretrained tails of the
    towers in ``modalities`` (the tail of a tower the model does not read is left out)."""

    def __init__(self, inputs: TuneInputs, *, modalities: tuple[str, ...], device: torch.device) -> None:
        super().__init__()
        self.inputs = inputs
        use_text = inputs.text_tail is not None and "text" in modalities
        use_image = inputs.image_tail is not None and "image" in modalities
        self.text_tail = copy.deepcopy(inputs.text_tail) if use_text else None
        self.image_tail = copy.deepcopy(inputs.image_tail) if use_image else None
        self.to(device).requires_grad_(True).eval()

    def __len__(self) -> int:
        return len(self.inputs.base)

    def train(self, mode: bool = True) -> TunedFeatures:
        return super().train(False)  # always inference mode (module docstring)

    def take(self, rows: torch.Tensor, *, device: torch.device | str = "cpu") -> TowerFeatures:
        """Tokens of item ``rows`` [B] (repeats allowed; each distinct item runs once)."""
        items, inverse = rows.unique(return_inverse=True)
        feats = self.inputs.base.take(items, device=device)
        if self.text_tail is not None:
            feats.text = self._text(items, device)
        if self.image_tail is not None:
            feats.image = self._image(items, device)
        return feats.take(inverse.to(device), device=device)

    def _text(self, items: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        states = self.inputs.text_states
        fields = states.field_text[items]  # [u, 4] text number, -1 = missing field
        present = fields >= 0
        texts, which = fields[present].unique(return_inverse=True)  # each distinct text once
        out = torch.zeros(*fields.shape, TEXT_DIM, device=device)
        if len(texts):
            vectors = self.text_tail(*states.padded(texts, device=device))  # [m, 384]
            out[present.to(device)] = vectors[which.to(device)]
        return out

    def _image(self, items: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        maps = self.inputs.image_maps
        row = maps.row[items]  # [u], -1 = no image
        present = row >= 0
        out = torch.zeros(len(items), IMAGE_TOKENS, IMAGE_DIM, device=device)
        if present.any():
            fmap = maps.maps[row[present]].to(device, non_blocking=True).float()  # [m, 192, h, w]
            out[present.to(device)] = self.image_tail(fmap)
        return out


@torch.no_grad()
def materialise(features: TunedFeatures, *, batch_size: int, device: torch.device) -> TowerFeatures:
    """Every item's tokens through the tails, on the CPU (at initialisation: the frozen features)."""
    parts = [features.take(torch.arange(start, min(start + batch_size, len(features))), device=device)
             for start in range(0, len(features), batch_size)]
    return TowerFeatures(*(torch.cat([getattr(p, name).cpu() for p in parts])
                           for name in ("text", "text_mask", "image", "image_present")))


def tune_inputs(items: pd.DataFrame, *, cache_dir: Path, text_layers: int, tune_image: bool,
                max_text_tokens: int, image_size: int, batch_size: int, num_workers: int,
                device: torch.device) -> TuneInputs:
    """The cached inputs of fine-tuning the last ``text_layers`` text layers and, if ``tune_image``,
    the image tower's last stage and head; a tower not fine-tuned gives its frozen tokens."""
    check_text_layers(text_layers, text_tower_layers())  # before any tower work
    n = len(items)
    states = text_tail = maps = image_tail = None
    if text_layers:
        states = text_states(items, cache_dir=cache_dir, max_text_tokens=max_text_tokens,
                             tail_layers=text_layers, batch_size=batch_size, device=device)
        text, text_mask = _placeholder(n, TEXT_TOKENS, TEXT_DIM), states.field_text >= 0
        text_tail = TextTail(TextTower(max_tokens=max_text_tokens), layers=text_layers)
    else:
        text, text_mask = text_tokens(items, cache_dir=cache_dir, max_text_tokens=max_text_tokens,
                                      batch_size=batch_size, device=device)
    if tune_image:
        maps = image_maps(items, cache_dir=cache_dir, image_size=image_size, batch_size=batch_size,
                          num_workers=num_workers, device=device)
        image, present = _placeholder(n, IMAGE_TOKENS, IMAGE_DIM), maps.row >= 0
        image_tail = ImageTail(ImageTower(image_size=image_size))
    else:
        image, present = image_tokens(items, cache_dir=cache_dir, image_size=image_size,
                                       batch_size=batch_size, num_workers=num_workers, device=device)
    base = TowerFeatures(text=text, text_mask=text_mask, image=image, image_present=present)
    return TuneInputs(base=base, text_states=states, text_tail=text_tail, image_maps=maps,
                      image_tail=image_tail)
