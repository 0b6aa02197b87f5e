"""Frozen tower features of every item: text [n, 4, 384] and image [n, 5, 1280] tokens, or, when
a tower is fine-tuned, its frozen head's output: text hidden states (ragged) and image maps.

Computed once and cached on disk (see cache.py) keyed by tower id and item content, so a re-run
or a second stage reuses them. Image decoding runs in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from encoder_torch.towers import (
    IMAGE_DIM,
    IMAGE_TOKENS,
    TEXT_DIM,
    TEXT_TOKENS,
    ImageTower,
    TextTower,
    load_image,
)
from saviorrec.progress import progress

log = logging.getLogger(__name__)


@dataclass
class TowerFeatures:
    text: torch.Tensor  # [n, 4, 384] float32: title, genres, tags, overview
    text_mask: torch.Tensor  # [n, 4] bool, True where that field is present
    image: torch.Tensor  # [n, 5, 1280] float32; row 0 = global average, then the 2x2 grid
    image_present: torch.Tensor  # [n] bool

    def __len__(self) -> int:
        return int(self.text.shape[0])

    @property
    def text_present(self) -> torch.Tensor:
        return self.text_mask.any(dim=1)

    def take(self, idx: torch.Tensor, *, device: torch.device | str = "cpu") -> TowerFeatures:
        return TowerFeatures(*(t[idx].to(device, non_blocking=True) for t in
                               (self.text, self.text_mask, self.image, self.image_present)))

    def off_the_shelf(self) -> np.ndarray:
        """Pooled frozen features (``pool_towers``): [n, 384 + 1280] float32."""
        return pool_towers(self.text, self.text_mask, self.image, self.image_present).numpy().astype(np.float32)


def pool_towers(text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                image_present: torch.Tensor) -> torch.Tensor:
    """The off-the-shelf vector of each item: [B, text_dim + image_dim], unit norm. Text: the
    sum of the present fields' vectors, normalised (zero without text); image: the global average
    token, normalised (zero without an image); the two concatenated and normalised again.
    SaviorEnc's tower skip (fusion.py) reads the same vector, so what it starts from is exactly
    the off-the-shelf baseline that the encoder is compared with."""
    fields = (text * text_mask[..., None]).sum(1)
    text_vec = torch.nn.functional.normalize(fields, dim=-1) * text_mask.any(dim=1)[:, None]
    image_vec = torch.nn.functional.normalize(image[:, 0], dim=-1) * image_present[:, None]
    return torch.nn.functional.normalize(torch.cat([text_vec, image_vec], dim=1), dim=-1)


@dataclass
class TextStates:
    """Hidden states entering the fine-tuned text layers, of every distinct field text, ragged."""

    states: torch.Tensor  # [tokens, 384] float16: the texts' token states one after another
    offsets: torch.Tensor  # [texts + 1] int64: text j is states[offsets[j]:offsets[j + 1]]
    field_text: torch.Tensor  # [n, 4] int64: the text of each item field, -1 where it is missing

    def padded(self, texts: torch.Tensor, *, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Texts [m] -> right-padded states [m, T, 384] float32 (zeros past the end) and the
        attention mask [m, T] int64, T the longest of them."""
        start = self.offsets[texts]
        length = self.offsets[texts + 1] - start
        position = torch.arange(int(length.max()) if len(texts) else 0)
        mask = position < length[:, None]  # [m, T]
        rows = torch.where(mask, start[:, None] + position, 0)
        states = self.states[rows].to(device, non_blocking=True).float()
        mask = mask.to(device, non_blocking=True)
        return states * mask[..., None], mask.long()


@dataclass
class ImageMaps:
    """Feature maps entering the fine-tuned image blocks, of every item with an image."""

    maps: torch.Tensor  # [images, 192, h, w] float16
    row: torch.Tensor  # [n] int64: the item's row of ``maps``, -1 without an image


def sha1(*parts: str | bytes) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@torch.no_grad()
def encode_texts(tower: TextTower, texts: list[list[str]], *, batch_size: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Per item field texts (4 strings, '' = missing) -> tokens [n, 4, 384] f16, mask [n, 4]."""
    flat = sorted({t for fields in texts for t in fields if t}, key=len)  # sorted: little padding
    vectors: dict[str, np.ndarray] = {}
    tower.to(device).eval()
    for start in progress(range(0, len(flat), batch_size), desc="text tower", unit="batch",
                      disable=len(flat) <= batch_size):
        chunk = flat[start:start + batch_size]
        batch = {k: v.to(device) for k, v in tower.tokenize(chunk).items()}
        out = tower(**batch).float().cpu().numpy()
        vectors.update(zip(chunk, out, strict=True))
    tokens = np.zeros((len(texts), TEXT_TOKENS, TEXT_DIM), dtype=np.float16)
    mask = np.zeros((len(texts), TEXT_TOKENS), dtype=bool)
    for i, fields in enumerate(texts):
        for j, t in enumerate(fields):
            if t:
                tokens[i, j], mask[i, j] = vectors[t], True
    return tokens, mask


@torch.no_grad()
def encode_text_states(tower: TextTower, texts: list[str], *, tail_layers: int, batch_size: int,
                       device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-empty texts -> the hidden states entering the last ``tail_layers`` layers,
    ragged: lengths [m] int64 (tokens of each text, in input order), states [sum, 384] float16."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    parts: list[np.ndarray] = [np.zeros((0, TEXT_DIM), np.float16)] * len(texts)
    tower.to(device).eval()
    for start in progress(range(0, len(order), batch_size), desc="text tower head", unit="batch",
                          disable=len(order) <= batch_size):
        chunk = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in tower.tokenize([texts[i] for i in chunk]).items()}
        states = tower.states_before_tail(**batch, tail_layers=tail_layers).float().cpu().numpy()
        mask = batch["attention_mask"].bool().cpu().numpy()
        for j, i in enumerate(chunk):
            parts[i] = states[j][mask[j]].astype(np.float16)  # the text's tokens, padding dropped
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    return lengths, np.concatenate(parts) if parts else np.zeros((0, TEXT_DIM), np.float16)


class _Images(Dataset):
    def __init__(self, paths: list[str], image_size: int) -> None:
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], image_size=self.image_size)


def _image_batches(tower: ImageTower, paths: list[str], forward: Callable[[torch.Tensor], torch.Tensor],
                   *, desc: str, batch_size: int, num_workers: int, device: torch.device) -> Iterator[np.ndarray]:
    """``forward`` of each batch of decoded images, as float32 arrays in the order of ``paths``."""
    loader = DataLoader(_Images(paths, tower.image_size), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    tower.to(device).eval()
    for pixels in progress(loader, desc=desc, unit="batch", disable=len(loader) <= 1):
        yield forward(pixels.to(device, non_blocking=True)).float().cpu().numpy()
    log.info("%s: %d images", desc, len(paths))


@torch.no_grad()
def encode_images(tower: ImageTower, paths: list[str], *, batch_size: int, num_workers: int,
                  device: torch.device) -> np.ndarray:
    """Image files -> tokens [n, 5, 1280] float16; decoding in ``num_workers`` processes."""
    out = np.zeros((len(paths), IMAGE_TOKENS, IMAGE_DIM), dtype=np.float16)
    if not paths:
        return out
    start = 0
    for tokens in _image_batches(tower, paths, tower, desc="image tower", batch_size=batch_size,
                                 num_workers=num_workers, device=device):
        out[start:start + len(tokens)] = tokens
        start += len(tokens)
    return out


@torch.no_grad()
def encode_image_maps(tower: ImageTower, paths: list[str], *, batch_size: int, num_workers: int,
                      device: torch.device) -> np.ndarray:
    """Image files (at least one) -> maps entering the fine-tuned blocks [n, 192, h, w] float16."""
    batches = _image_batches(tower, paths, tower.map_before_tail, desc="image tower head",
                             batch_size=batch_size, num_workers=num_workers, device=device)
    return np.concatenate([b.astype(np.float16) for b in batches])
