"""Semantic ids are versioned: the model must read ids of the RQ-VAE version it was trained on.

At start-up the service reads the ``rqvae_version`` of a few items from the online store (the
items of the export's sample request, then the first ``serving.version_probe_items`` item ids of
the lake's item_multimodal table when it is on this host) and refuses a mismatch. Every request
checks its own items again, so a store re-materialised with another version later is refused too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from saviorrec.lake import ExportFiles
from saviorrec.ranker_inputs import ITEM_ID, SEQ_ITEM_IDS

log = logging.getLogger(__name__)


class VersionMismatch(RuntimeError):
    """Store features carry semantic ids of another RQ-VAE version than the model."""


def mismatch_message(model_version: str | None, found: Iterable[str], where: str) -> str:
    return (f"RQ-VAE version mismatch: the model was trained on semantic ids of rqvae_version "
            f"{model_version!r} but {where} holds {sorted(found)!r}; export a ranker trained on "
            "the store's version or re-materialise the store with the model's")


def check_items(model_version: str | None, items: Mapping[int, Mapping[str, Any]]) -> None:
    """Raise VersionMismatch if an item with a multimodal row has another rqvae_version."""
    if model_version is None:
        return
    found = {str(v["rqvae_version"]) for v in items.values() if v.get("rqvae_version")}
    if found - {model_version}:
        raise VersionMismatch(mismatch_message(model_version, found, "the online store"))


def probe_item_ids(export_dir: Path, item_multimodal: Path, limit: int) -> list[int]:
    """Items whose version to check: the sample request's, then the lake's first ``limit``."""
    ids: list[int] = []
    sample = ExportFiles(export_dir).sample_request
    if sample.is_file():
        inputs = json.loads(sample.read_text()).get("inputs", {})
        for name in (ITEM_ID, SEQ_ITEM_IDS):
            ids += [int(i) for i in _flatten(inputs.get(name, []))]
    if item_multimodal.is_file():
        table = pq.ParquetFile(item_multimodal)
        for batch in table.iter_batches(batch_size=limit, columns=["item_id"]):
            ids += [int(i) for i in batch.column(0).to_pylist()]
            break
    return [i for i in dict.fromkeys(ids) if i > 0]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    return [value]
