"""The ranking service without HTTP: features from Feast online, scores from the SavedModel.

``RankingService.start(cfg)`` loads the model once, opens the store, refuses a model whose
RQ-VAE version differs from the store's features and warms the signature up; ``rank`` then
serves one request: one sequence read, one batched item read, one model call.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saviorrec.config import REPO_ROOT, Config, ServingConfig
from saviorrec.lake import Lake
from saviorrec.ranker_inputs import INPUTS, ITEM_EMBEDDING, ITEM_SEMANTIC_IDS, inputs
from saviorrec.schema import PADDING_ITEM_ID
from serving.counters import Counters
from serving.features import FeatureReader, StoreUnavailable
from serving.ranker import ModelError, Ranker
from serving.tensors import FeatureShapeError, Layout, build_inputs
from serving.versions import (
    VersionMismatch,
    check_items,
    mismatch_message,
    probe_item_ids,
)

log = logging.getLogger(__name__)

# inputs the online store does not hold (base_score)
UNSERVABLE_INPUTS = tuple(sorted({i.name for i in INPUTS} - {i.name for i in inputs()}))


def model_dir(cfg: Config) -> Path:
    """serving.model_dir (relative to the repository root), else the run's export folder."""
    if not cfg.serving.model_dir:
        return Lake.from_config(cfg).export_dir
    path = Path(cfg.serving.model_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def tf_threads(serving: ServingConfig) -> int:
    """TensorFlow threads of one worker: serving.tf_threads, or when that is 0 (TensorFlow's
    default, one per core) and there are several workers, the cores this process may use
    shared out between them (at least 1), so that N workers do not run N pools of every core."""
    if serving.tf_threads or serving.workers == 1:
        return serving.tf_threads
    return max(1, len(os.sched_getaffinity(0)) // serving.workers)


def layout_of(ranker: Ranker, cfg: Config) -> Layout:
    return Layout(embedding_dim=ranker.trailing(ITEM_EMBEDDING)[0],
                  semantic_id_width=ranker.trailing(ITEM_SEMANTIC_IDS)[0],
                  sequence_length=ranker.sequence_length() or cfg.sequences.max_len,
                  user_ctr_prior=cfg.stats.ctr_prior)


def _check_defaults(layout: Layout, defaults: dict[str, Any]) -> None:
    store = (len(defaults["embedding"]), len(defaults["semantic_ids"]))  # type: ignore[arg-type]
    if store != (layout.embedding_dim, layout.semantic_id_width):
        raise FeatureShapeError(
            f"the Feast store was applied for embeddings of width {store[0]} and {store[1]} "
            f"semantic ids, the model takes {layout.embedding_dim} and "
            f"{layout.semantic_id_width}: apply the store with the model's config")


def freeze_startup_objects() -> None:
    """Move every object alive after start-up (TensorFlow, Feast, the model: about a million)
    to the collector's permanent generation, so that a full collection walks only what requests
    made since. The item cache keeps request-made objects alive, which triggers full
    collections; each walked everything, and at a 1M-item catalogue those pauses were the
    service's p99 (benchmarks/serving.py --mode catalogue, docs/performance.md)."""
    gc.collect()
    gc.freeze()


@dataclass
class RankingService:
    cfg: Config
    ranker: Ranker
    reader: FeatureReader
    layout: Layout
    counters: Counters = field(default_factory=Counters)
    version_verified: bool = False
    probe_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counters.item_cache = getattr(self.reader, "item_cache", None)

    @classmethod
    def start(cls, cfg: Config) -> RankingService:
        ranker = Ranker(model_dir(cfg), xla=cfg.serving.xla,
                        max_candidates=cfg.serving.max_candidates,
                        threads=tf_threads(cfg.serving))
        bad = [n for n in UNSERVABLE_INPUTS if n in ranker.inputs]
        if bad:
            raise ModelError(f"model {ranker.model_version} reads {bad}, which the online "
                             "store does not hold: export a ranker trained without them")
        reader = FeatureReader(cfg)
        layout = layout_of(ranker, cfg)
        _check_defaults(layout, reader.defaults())
        service = cls(cfg, ranker, reader, layout, probe_ids=probe_item_ids(
            ranker.export_dir, Lake.from_config(cfg).item_multimodal,
            cfg.serving.version_probe_items))
        try:
            service.verify_version()
        except StoreUnavailable as e:
            log.warning("cannot check the RQ-VAE version at start-up (%s); every request "
                        "checks its items, /readyz retries", e)
        seconds = ranker.warm_up(service.dummy_inputs)
        freeze_startup_objects()
        log.info("serving model %s (variant %s, rqvae %s) from %s with the %s; XLA %s; "
                 "warm-up %.2fs", ranker.model_version, ranker.variant, ranker.rqvae_version,
                 ranker.export_dir, reader.name,
                 f"on, candidate buckets {ranker.buckets}" if ranker.xla else "off", seconds)
        return service

    def verify_version(self) -> None:
        """Compare the store's rqvae_version with the model's; raise VersionMismatch."""
        expected = self.ranker.rqvae_version
        if expected is None or self.version_verified:
            self.version_verified = True
            return
        found = self.reader.rqvae_versions(self.probe_ids)
        if found - {expected}:
            raise VersionMismatch(mismatch_message(expected, found, self.reader.name))
        if not found:
            log.warning("none of %d probe items has a multimodal row in the %s: RQ-VAE "
                        "version unchecked until a request reads one", len(self.probe_ids),
                        self.reader.name)
            return
        self.version_verified = True

    def dummy_inputs(self, n: int) -> dict[str, np.ndarray]:
        items = {i: {**self.reader.defaults()} for i in range(1, n + 1)}
        return build_inputs(0, list(items), [], items, self.layout)

    def rank(self, user_id: int, item_ids: list[int]) -> dict[str, Any]:
        began = time.perf_counter()
        features = self.reader.read(user_id, item_ids)
        read = time.perf_counter()
        check_items(self.ranker.rqvae_version, features.items)
        inputs = build_inputs(user_id, item_ids, features.sequence.item_ids, features.items,
                              self.layout, features.sequence.stats)
        scores = self.ranker.predict(inputs)
        scored = time.perf_counter()
        self._observe(features, item_ids, began, read, scored)
        order = np.argsort(-scores, kind="stable")
        missing = set(features.missing)
        return {
            "user_id": user_id,
            "model_version": self.ranker.model_version,
            "variant": self.ranker.variant,
            "rqvae_version": self.ranker.rqvae_version,
            "items": [{"item_id": item_ids[k], "score": float(scores[k]),
                       "has_features": item_ids[k] not in missing} for k in order],
            "missing_item_ids": [i for i in item_ids if i in missing],
            "unknown_user": not features.sequence.known,
            "sequence_length": int(features.sequence.seq_len),
        }

    def _observe(self, features: Any, item_ids: list[int], began: float, read: float,
                 scored: float) -> None:
        c, missing = self.counters, set(features.missing)
        seq = {i for i in features.sequence.item_ids if i != PADDING_ITEM_ID}
        c.candidates.inc(len(item_ids))
        c.candidates_without_features.inc(sum(i in missing for i in item_ids))
        c.sequence_items_without_features.inc(len(seq & missing))
        if not features.sequence.known:
            c.unknown_users.inc()
        c.latency.labels("features").observe(read - began)
        c.latency.labels("model").observe(scored - read)
