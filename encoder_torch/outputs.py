"""Files the encoder stage writes: checkpoints (with their dataclass config), embeddings,
codebooks, version files. Every write is atomic."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from encoder_torch.fusion import SaviorEnc, SaviorEncConfig
from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
from saviorrec.lake import Lake, atomic_path


def save_checkpoint(path: Path, *, model: torch.nn.Module, config: Any, **extra: Any) -> str:
    """Write {config, state_dict, extra} atomically; returns the version: sha256[:12] of the file."""
    buffer = io.BytesIO()
    torch.save({"config": asdict(config), "state_dict": model.state_dict(), **extra}, buffer)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()[:12]


def _load(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run the stage that trains it)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_saviorenc(path: Path) -> SaviorEnc:
    ckpt = _load(path)
    config = SaviorEncConfig(**{**ckpt["config"], "modalities": tuple(ckpt["config"]["modalities"])})
    model = SaviorEnc(config=config)
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_rqvae(path: Path) -> RQVAE:
    ckpt = _load(path)
    config = RQVAEModelConfig(**{**ckpt["config"], "hidden": tuple(ckpt["config"]["hidden"])})
    model = RQVAE(config=config)
    model.load_state_dict(ckpt["state_dict"])
    return model


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def vectors_column(vectors: np.ndarray) -> pa.Array:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]).cast(
        pa.list_(pa.float32()))


def ids_column(ids: np.ndarray) -> pa.Array:
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), ids.shape[1]).cast(
        pa.list_(pa.int64()))


def feature_timestamp(lake: Lake) -> datetime:
    """event_timestamp of item_multimodal rows: the earliest raw event (so a point-in-time join
    finds the static embedding for every sample), or the Unix epoch when there are no events."""
    if lake.events.exists():
        earliest = pc.min(pq.read_table(lake.events, columns=["event_timestamp"])["event_timestamp"])
        if earliest.is_valid:
            return earliest.as_py().astimezone(UTC)
    return datetime(1970, 1, 1, tzinfo=UTC)
