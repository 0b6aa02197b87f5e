"""Onboarding: new items servable in seconds, without re-running the batch pipeline.

``saviorrec items add --config C FILE`` and the service's ``POST /items`` run this same code
(:class:`Onboarder`). For each new item: the run's frozen towers, SaviorEnc (centred) and RQ-VAE
give its embedding and L codes (:mod:`encoder_torch.onboard`); its disambiguation index follows
those already stored for its codes; its rows go to the offline sources and, through Feast's
push sources, to the online store (:mod:`feature_repo.push`): the multimodal row, and item
statistics at their PV-0 defaults (``schema.ITEM_STAT_DEFAULTS``, what training saw for an item
before its first event) unless the store already has statistics for it.

- Versions: the RQ-VAE on disk must be the one the served model was trained with (its export's
  ``rqvae_version``), and must have been trained on the SaviorEnc on disk; else refused naming
  both.
- Idempotent: an item whose id is known with the same content (title, genres, overview, poster
  path, tags; the catalogue's items.parquet or an earlier onboarding, kept in Lake.onboarded_items)
  is left as it is; an id known with other content refuses the whole request, naming it.
- Atomic: everything is computed and the online store read (a store that is down fails here,
  named) before the first write; the offline writes are undone and the online fields put back
  if the push fails. One onboarding at a time per run (a lock file), so two never interleave.
- An item with neither text nor image is embedded from SaviorEnc's missing-modality tokens
  (``onboard.no_content: missing_tokens``, reported) or refused (``refuse``).

This module is an app (it joins two stages); the serving app cannot import it (the dependency
rule keeps torch out of the service's imports), so ``saviorrec serve`` hands the service an
Onboarder's :meth:`Onboarder.add_records` (saviorrec/cli.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from encoder_torch.onboard import FrozenEncoder
from encoder_torch.outputs import ids_column, vectors_column
from encoder_torch.semantic_ids import disambiguate_new
from feature_repo.definitions import ITEM_MULTIMODAL_PUSH, ITEM_STATS_PUSH
from feature_repo.push import (
    OfflineWrites,
    OnlineSnapshot,
    offline_source,
    online_stats_known,
    push_online,
)
from feature_repo.store import get_store
from saviorrec.config import Config
from saviorrec.datasets.new_items import (
    OnboardRefused,
    has_content,
    read_new_items,
    request_items,
)
from saviorrec.lake import ExportFiles, Lake, read_table
from saviorrec.schema import ITEM_MULTIMODAL, ITEM_STAT_DEFAULTS, ITEM_STATS, ITEMS

log = logging.getLogger(__name__)

CONTENT = ("title", "genres", "tags", "overview", "image_path")  # what "the same item" compares
SHOWN = 5  # conflicting ids named in a refusal


def served_rqvae_version(export_dir: Path) -> str:
    """The RQ-VAE version the exported (served) model was trained on."""
    meta = ExportFiles(export_dir).meta
    if not meta.is_file():
        raise FileNotFoundError(f"no exported model at {export_dir} ({meta.name} missing): the "
                                "RQ-VAE version the service serves is unknown; run "
                                "`saviorrec export`")
    version = json.loads(meta.read_text()).get("rqvae_version")
    if not version:
        raise OnboardRefused(f"{meta} records no rqvae_version: cannot check the RQ-VAE")
    return str(version)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _contents(path: Path) -> dict[int, tuple[Any, ...]]:
    """item_id -> CONTENT of an ITEMS file (empty when there is none)."""
    if not path.exists():
        return {}
    table = read_table(path, ITEMS).select(["item_id", *CONTENT]).to_pydict()
    return {int(i): tuple(table[c][k] for c in CONTENT) for k, i in enumerate(table["item_id"])}


def _differences(old: tuple[Any, ...], new: tuple[Any, ...]) -> str:
    return ", ".join(f"{c} {a!r} -> {b!r}" for c, a, b in zip(CONTENT, old, new, strict=True)
                     if a != b)


@dataclass
class Onboarder:
    cfg: Config
    encoder: FrozenEncoder
    store: Any  # feast.FeatureStore

    @classmethod
    def load(cls, cfg: Config, *, served_version: str, store: Any = None) -> Onboarder:
        """Load the frozen models once; refuse an RQ-VAE other than ``served_version``."""
        encoder = FrozenEncoder.load(cfg)
        mine = encoder.versions.rqvae_version
        if served_version != mine:
            raise OnboardRefused(
                f"RQ-VAE version mismatch: the served model was trained on semantic ids of "
                f"rqvae_version {served_version!r} but {Lake.from_config(cfg).rqvae_checkpoint} "
                f"is {mine!r}; onboard with the run whose RQ-VAE the model was trained on")
        store = store if store is not None else get_store(cfg)
        for name in (ITEM_MULTIMODAL_PUSH, ITEM_STATS_PUSH):
            try:
                store.get_data_source(name)
            except Exception:  # noqa: BLE001 (Feast raises its own DataSourceObjectNotFound)
                raise OnboardRefused(f"the Feast registry {Lake.from_config(cfg).feast_registry} "
                                     f"has no push source {name!r}: re-run `saviorrec features "
                                     "apply`") from None
        return cls(cfg, encoder, store)

    def add_file(self, path: Path, *, at: datetime | None = None) -> dict[str, Any]:
        return self.add(read_new_items(path), at=at)

    def add_records(self, records: list[Any]) -> dict[str, Any]:
        """POST /items: the body's ``items`` (posters as absolute paths)."""
        return self.add(request_items(records))

    def add(self, items: pa.Table, *, at: datetime | None = None) -> dict[str, Any]:
        """Onboard ``items`` (schema.ITEMS rows); ``at`` stamps the rows (default: now)."""
        began = time.perf_counter()
        at = at or datetime.now(UTC)
        lake = Lake.from_config(self.cfg)
        bare = [int(i) for i, ok in zip(items.column("item_id").to_pylist(), has_content(items),
                                        strict=True) if not ok]
        if bare and self.cfg.onboard.no_content == "refuse":
            raise OnboardRefused(f"{len(bare)} item(s) have neither text nor an image, e.g. "
                                 f"item_id {bare[0]} (onboard.no_content: refuse; "
                                 "missing_tokens embeds them from the missing-modality tokens)")
        with _locked(lake.onboard_lock):
            new, unchanged = self._classify(lake, items)
            if not new.num_rows:
                return {"added": [], "unchanged": unchanged, "without_content": [],
                        "seconds": round(time.perf_counter() - began, 4)}
            embedded = self.encoder.embed(new.to_pandas())
            embed_s = time.perf_counter() - began
            ids = embedded.item_ids.tolist()
            existing = read_table(lake.item_multimodal, ITEM_MULTIMODAL).column(
                "semantic_ids").to_pylist() if lake.item_multimodal.exists() else []
            width = self.encoder.levels + 1
            semantic_ids = disambiguate_new(embedded.codes,
                                            np.asarray(existing, np.int64).reshape(-1, width))
            with_stats = online_stats_known(self.store, ids)  # a read: a down store fails here
            snapshot = OnlineSnapshot.take(self.store, ids)
            multimodal = self._multimodal(embedded, semantic_ids, at)
            stats = self._pv0_stats([i for i in ids if i not in with_stats], at)
            self._write(lake, new, multimodal, stats, snapshot)
        bare_new = sorted(set(bare) & set(ids))
        if bare_new:
            log.warning("%d item(s) without text or image embedded from the missing-modality "
                        "tokens, e.g. item_id %d", len(bare_new), bare_new[0])
        return {"added": ids, "unchanged": unchanged, "without_content": bare_new,
                "pv0_stats": stats.num_rows, "encoder_version": self.encoder.versions.encoder_version,
                "rqvae_version": self.encoder.versions.rqvae_version,
                "embed_s": round(embed_s, 4), "seconds": round(time.perf_counter() - began, 4)}

    def _classify(self, lake: Lake, items: pa.Table) -> tuple[pa.Table, list[int]]:
        """(the items to add, the ids already there with the same content); refuses conflicts."""
        known = {**_contents(lake.items), **_contents(lake.onboarded_items)}
        stored = set(pq.read_table(lake.item_multimodal, columns=["item_id"]).column(0)
                     .to_pylist()) if lake.item_multimodal.exists() else set()
        rows = items.select(["item_id", *CONTENT]).to_pydict()
        keep, unchanged, conflicts = [], [], []
        for k, item_id in enumerate(rows["item_id"]):
            content = tuple(rows[c][k] for c in CONTENT)
            if item_id in known:
                if known[item_id] == content:
                    unchanged.append(item_id)
                else:
                    conflicts.append(f"{item_id} ({_differences(known[item_id], content)})")
            elif item_id in stored:
                conflicts.append(f"{item_id} (in {lake.item_multimodal.name}, content unknown)")
            else:
                keep.append(k)
        if conflicts:
            raise OnboardRefused(f"{len(conflicts)} item id(s) already exist with other content, "
                                 f"nothing was added: {'; '.join(conflicts[:SHOWN])}")
        return items.take(pa.array(keep, pa.int64())), unchanged

    def _multimodal(self, embedded: Any, semantic_ids: np.ndarray, at: datetime) -> pa.Table:
        n, versions = len(embedded.item_ids), self.encoder.versions
        return pa.table({
            "item_id": pa.array(embedded.item_ids, pa.int64()),
            "embedding": vectors_column(embedded.embedding),
            "semantic_ids": ids_column(semantic_ids),
            "encoder_version": [versions.encoder_version] * n,
            "rqvae_version": [versions.rqvae_version] * n,
            "event_timestamp": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
        }).cast(ITEM_MULTIMODAL.arrow_schema())

    @staticmethod
    def _pv0_stats(item_ids: list[int], at: datetime) -> pa.Table:
        rows = [{"item_id": i, "event_timestamp": at, **ITEM_STAT_DEFAULTS} for i in item_ids]
        return pa.Table.from_pylist(rows, schema=ITEM_STATS.arrow_schema())

    def _write(self, lake: Lake, new: pa.Table, multimodal: pa.Table, stats: pa.Table,
               snapshot: OnlineSnapshot) -> None:
        """Offline, then online; on any failure both are put back as they were."""
        offline = OfflineWrites()
        try:
            offline.append_to_file(offline_source(self.cfg, "item_multimodal"), multimodal,
                                   ITEM_MULTIMODAL)
            if stats.num_rows:
                offline.add_part(offline_source(self.cfg, "item_stats"), stats, ITEM_STATS)
            offline.append_to_file(lake.onboarded_items, new, ITEMS)
            push_online(self.store, "item_multimodal", multimodal)
            push_online(self.store, "item_stats", stats)
        except BaseException:
            try:
                snapshot.restore()
            except Exception as e:  # noqa: BLE001 (the first error is the one to raise)
                log.error("online rows of items %s could not be put back: %s",
                          snapshot.entity_ids[:SHOWN], e)
            offline.rollback()
            raise
        offline.commit()

