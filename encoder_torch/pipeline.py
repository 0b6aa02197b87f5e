"""Entry points called by ``saviorrec encode`` and ``saviorrec rqvae`` (saviorrec/cli.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from encoder_torch.cache import tower_features
from encoder_torch.data import coclick_pairs, next_click_pairs, read_items
from encoder_torch.device import resolve_device
from encoder_torch.features import TowerFeatures
from encoder_torch.finetune import TunedFeatures, materialise, tune_inputs
from encoder_torch.fusion import MODALITIES, SaviorEnc, encoder_model_config
from encoder_torch.hit_rate import i2i_hit_rate
from encoder_torch.outputs import save_checkpoint, vectors_column, write_json
from encoder_torch.rq_stage import run_rqvae  # noqa: F401  (entry point re-exported)
from encoder_torch.train_encoder import embed_items, train_saviorenc
from saviorrec.config import Config
from saviorrec.lake import Lake, write_table
from saviorrec.metrics import update_metrics
from saviorrec.schema import EMBEDDINGS, OFF_THE_SHELF, TEST, VALID

log = logging.getLogger(__name__)
VARIANTS = {"aligned": MODALITIES, "text_only": ("text",), "image_only": ("image",)}


def _item_features(cfg: Config, items: pd.DataFrame, device: torch.device) -> tuple[
        TowerFeatures, Callable[[tuple[str, ...]], TowerFeatures | TunedFeatures]]:
    """(The frozen towers' features, and per SaviorEnc variant the features it trains on): the
    frozen ones themselves, or fresh pretrained tower tails to fine-tune (finetune.py)."""
    ec, cache_dir = cfg.encoder, Lake.from_config(cfg).tower_cache
    if not (ec.finetune_text_layers or ec.finetune_image):
        feats = tower_features(items, cache_dir=cache_dir, max_text_tokens=ec.max_text_tokens,
                               image_size=ec.image_size, batch_size=ec.tower_batch_size,
                               num_workers=ec.num_workers, device=device)
        return feats, lambda _: feats
    inputs = tune_inputs(items, cache_dir=cache_dir, text_layers=ec.finetune_text_layers,
                         tune_image=ec.finetune_image, max_text_tokens=ec.max_text_tokens,
                         image_size=ec.image_size, batch_size=ec.tower_batch_size,
                         num_workers=ec.num_workers, device=device)

    def tuned(modalities: tuple[str, ...]) -> TunedFeatures:
        return TunedFeatures(inputs, modalities=modalities, device=device)

    # The untrained tails give the frozen features (up to the float16 cache): the "before" baseline.
    return materialise(tuned(MODALITIES), batch_size=ec.batch_size, device=device), tuned


def run_encoder(cfg: Config) -> dict[str, Any]:
    """Tower features (cached) -> SaviorEnc trained on co-click pairs (with the towers' last
    layers, if ``encoder.finetune_*``) -> embeddings + Hit@K."""
    ec, lake = cfg.encoder, Lake.from_config(cfg)
    device = resolve_device(ec.device)
    torch.manual_seed(ec.seed)
    items = read_items(lake)
    item_ids = items["item_id"].to_numpy(np.int64)
    t0 = time.perf_counter()
    feats, features_for = _item_features(cfg, items, device)
    tower_s = time.perf_counter() - t0
    pairs = coclick_pairs(lake, item_ids)
    splits = {s: next_click_pairs(lake, split=s) for s in (VALID, TEST)}
    hits: dict[str, dict[str, float]] = {s: {} for s in splits}

    def evaluate(name: str, embeddings: np.ndarray) -> None:
        for split, (queries, targets) in splits.items():
            hits[split][name] = i2i_hit_rate(embeddings=embeddings, item_ids=item_ids, queries=queries,
                                             targets=targets, k=ec.hit_k, index_kind=ec.index)
        log.info("Hit@%d %s: test %.4f valid %.4f", ec.hit_k, name, hits[TEST][name], hits[VALID][name])

    off_the_shelf = feats.off_the_shelf()
    evaluate("off_the_shelf", off_the_shelf)
    # The embeddings before alignment, for the report's Fig. 5 (not served, not versioned).
    write_table(pa.table({"item_id": item_ids, "embedding": vectors_column(off_the_shelf)}),
                lake.off_the_shelf_embeddings, OFF_THE_SHELF)
    train = partial(train_saviorenc, pairs=pairs, epochs=ec.epochs, batch_size=ec.batch_size, lr=ec.lr,
                    warmup_epochs=ec.warmup_epochs, temperature=ec.temperature,
                    weight_decay=ec.weight_decay, device=device, seed=ec.seed,
                    tower_lr_scale=ec.finetune_lr_scale, logq_correction=ec.logq_correction,
                    max_steps_per_epoch=ec.max_steps_per_epoch)
    variants = VARIANTS if ec.ablations else {"aligned": MODALITIES}
    train_s = {}
    for name, modalities in variants.items():
        torch.manual_seed(ec.seed)
        model = SaviorEnc(config=encoder_model_config(cfg, modalities))
        features = features_for(modalities)
        if model.config.tower_skip:
            model.init_skip(features, batch_size=ec.batch_size)
        t1 = time.perf_counter()
        history = train(model=model, features=features, desc=f"saviorenc[{name}]")
        train_s[name] = time.perf_counter() - t1
        z = embed_items(model=model, features=features, batch_size=ec.batch_size, device=device)
        if ec.center:
            model.set_center(torch.from_numpy(z.mean(axis=0)))
            z = embed_items(model=model, features=features, batch_size=ec.batch_size, device=device)
        evaluate(name, z)
        if name == "aligned":
            towers = {} if features is feats else {"towers": {
                "finetune_text_layers": ec.finetune_text_layers, "finetune_image": ec.finetune_image,
                "state_dict": features.state_dict()}}  # the fine-tuned tails, to embed new items
            version = save_checkpoint(lake.encoder_checkpoint, model=model, config=model.config,
                                      loss_history=history, **towers)
            table = pa.table({"item_id": item_ids, "embedding": vectors_column(z),
                              "encoder_version": [version] * len(item_ids)})
            write_table(table, lake.encoder_embeddings, EMBEDDINGS)
            write_json(lake.encoder_version, {"encoder_version": version})
    key = f"hit_at_{ec.hit_k}"
    update_metrics(lake.metrics, f"encoder.{key}", hits[TEST])
    update_metrics(lake.metrics, f"encoder.{key}_valid", hits[VALID])
    timing = {"tower_features_s": tower_s, "train_s": train_s, "device": str(device),
              "items": len(items), "coclick_pairs": len(pairs),
              "max_steps_per_epoch": ec.max_steps_per_epoch,
              "test_queries": len(splits[TEST][0]), "encoder_version": version}
    update_metrics(lake.metrics, "encoder.run", timing)
    return {key: hits[TEST], f"{key}_valid": hits[VALID], **timing}
