"""The RQ-VAE stage: train on the SaviorEnc embeddings, write semantic ids, codebooks, metrics.

The codebook size follows the catalogue (``codebook_plan``): the first L - 1 levels must give
rqvae.prefixes_per_item code prefixes per item, and the catalogue must fill every code with a
few items (rqvae.min_items_per_code). Ids that collapse stop the run before anything is written
(semantic_ids.check_not_collapsed).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from encoder_torch.data import coclick_pairs, read_items, rows_of
from encoder_torch.device import resolve_device
from encoder_torch.outputs import (
    feature_timestamp,
    ids_column,
    save_checkpoint,
    vectors_column,
    write_json,
    write_npy,
)
from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
from encoder_torch.semantic_ids import (
    check_not_collapsed,
    collision_stats,
    disambiguate,
    utilization_per_level,
)
from encoder_torch.train_rqvae import train_rqvae
from saviorrec.config import Config
from saviorrec.lake import Lake, read_table, write_table
from saviorrec.metrics import update_metrics
from saviorrec.schema import EMBEDDINGS, ITEM_MULTIMODAL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodebookPlan:
    codebook_size: int  # K used
    batch_size: int  # batch used
    # None, or why the ids will collide: no K the catalogue fills gives enough ids at these levels
    too_few_levels: str | None = None


def _power_of_two_at_least(x: float) -> int:
    return 1 << max(1, math.ceil(math.log2(x) - 1e-9))


def codebook_plan(*, items: int, levels: int, codebook_size: int, batch_size: int,
                  prefixes_per_item: float, min_items_per_code: int,
                  batch_items_per_code: int) -> CodebookPlan:
    """K and the batch for a catalogue of ``items``. K lies between ``room``, the smallest power
    of two with K^(levels - 1) >= prefixes_per_item x items (K^levels for one level), and
    ``most``, the largest power of two <= items / min_items_per_code: the configured
    ``codebook_size`` when it lies there, else the nearer bound. When room > most no K serves
    both (the levels are too few for the catalogue): the configured K stays and
    ``too_few_levels`` says how many levels would do. The batch holds batch_items_per_code x K
    items at least (Sinkhorn balances a batch), the catalogue at most."""
    prefix_levels = max(levels - 1, 1)
    room = _power_of_two_at_least((prefixes_per_item * items) ** (1.0 / prefix_levels))
    most = 1 << int(math.log2(items / min_items_per_code)) if items >= 2 * min_items_per_code else 1
    if room <= most:
        k, note = min(max(codebook_size, room), most), None
    else:
        k = codebook_size
        needed = 1 + math.ceil(math.log(prefixes_per_item * items) / math.log(max(most, 2)))
        note = (f"{items} items at rqvae.levels={levels}: K^{prefix_levels} >= "
                f"rqvae.prefixes_per_item ({prefixes_per_item:g}) x items needs K >= {room}, but the "
                f"catalogue fills at most K = {most} (rqvae.min_items_per_code={min_items_per_code}); "
                f"K stays {k} and ids will collide; rqvae.levels >= {needed} would give them room")
    return CodebookPlan(codebook_size=k, batch_size=min(items, max(batch_size, batch_items_per_code * k)),
                        too_few_levels=note)


def plan_for(cfg: Config, items: int) -> CodebookPlan:
    rc = cfg.rqvae
    return codebook_plan(items=items, levels=rc.levels, codebook_size=rc.codebook_size,
                         batch_size=rc.batch_size, prefixes_per_item=rc.prefixes_per_item,
                         min_items_per_code=rc.min_items_per_code,
                         batch_items_per_code=rc.batch_items_per_code)


def fit(cfg: Config, *, assignment: str, x: torch.Tensor, pairs: np.ndarray) -> tuple[RQVAE, dict[str, Any]]:
    """Train one RQ-VAE (K and batch from ``plan_for``); returns it with its code statistics
    (nearest-code ids of every item)."""
    rc, plan = cfg.rqvae, plan_for(cfg, len(x))
    torch.manual_seed(rc.seed)
    config = RQVAEModelConfig.from_run(rc, assignment=assignment, input_dim=x.shape[1],
                                       codebook_size=plan.codebook_size)
    model = RQVAE(config=config).to(x.device)
    if not rc.kmeans_init:
        model.fit_input_scaling(x)
    t0 = time.perf_counter()
    history = train_rqvae(model=model, x=x, pairs=pairs, epochs=rc.epochs, batch_size=plan.batch_size,
                          lr=rc.lr, lambda_recon=rc.lambda_recon, lambda_commit=rc.lambda_commit,
                          temperature=rc.temperature, dead_code_every=rc.dead_code_every,
                          seed=rc.seed, kmeans=rc.kmeans_init, sinkhorn_fraction=rc.sinkhorn_fraction,
                          desc=f"rqvae[{assignment}]")
    codes = model.semantic_codes(x)
    with torch.no_grad():
        recon = torch.nn.functional.mse_loss(model.decode(codes), x).item()
    codes_np = codes.cpu().numpy()
    stats = {"codebook_size": plan.codebook_size, "batch_size": plan.batch_size,
             "utilization_per_level": utilization_per_level(codes_np, codebook_size=plan.codebook_size),
             **collision_stats(codes_np), "recon_mse": recon, "final_loss": history[-1],
             "train_s": time.perf_counter() - t0}
    log.info("rqvae[%s]: %s", assignment, stats)
    return model, {"codes": codes_np, **stats}


def run_rqvae(cfg: Config) -> dict[str, Any]:
    rc, lake = cfg.rqvae, Lake.from_config(cfg)
    device = resolve_device(rc.device)
    items = read_items(lake)
    item_ids = items["item_id"].to_numpy(np.int64)
    emb = read_table(lake.encoder_embeddings, EMBEDDINGS).to_pandas()
    emb_ids = emb["item_id"].to_numpy(np.int64)
    if len(emb) != len(items) or not np.array_equal(np.sort(emb_ids), item_ids):
        raise ValueError(f"{lake.encoder_embeddings} has {len(emb)} items, {lake.items} "
                         f"{len(items)}: re-run `saviorrec encode`")
    order = np.argsort(emb_ids)
    rows_of(item_ids, emb_ids[order], what="embeddings.item_id")
    z = np.stack(emb["embedding"].to_numpy()[order]).astype(np.float32)
    encoder_version = str(emb["encoder_version"].iloc[0])
    x = torch.from_numpy(z).to(device)
    pairs = coclick_pairs(lake, item_ids)
    distinct = len(np.unique(z, axis=0))  # items with equal z get equal ids, whatever the RQ-VAE
    plan = plan_for(cfg, len(z))
    if plan.too_few_levels:
        log.warning("rqvae: %s", plan.too_few_levels)
    if plan.codebook_size != rc.codebook_size:
        log.info("rqvae: %d items, %d levels: K = %d codes per level (rqvae.codebook_size %d), "
                 "batch %d", len(z), rc.levels, plan.codebook_size, rc.codebook_size, plan.batch_size)
    runs = [rc.assignment] + (["argmin"] if rc.compare_argmin and rc.assignment != "argmin" else [])
    results = {}
    for assignment in runs:
        model_a, results[assignment] = fit(cfg, assignment=assignment, x=x, pairs=pairs)
        if assignment == rc.assignment:
            model = model_a
    codes = results[rc.assignment]["codes"]
    check_not_collapsed(codes, codebook_size=plan.codebook_size, min_utilization=rc.min_utilization,
                        min_unique_ratio=rc.min_unique_ratio, distinct_inputs=distinct)
    version = save_checkpoint(lake.rqvae_checkpoint, model=model, config=model.config,
                              encoder_version=encoder_version)
    write_npy(lake.rqvae_codebooks, model.codebooks.detach().cpu().numpy().astype(np.float32))
    write_json(lake.rqvae_version, {
        "rqvae_version": version, "encoder_version": encoder_version, "levels": rc.levels,
        "codebook_size": plan.codebook_size, "latent_dim": rc.latent_dim})
    semantic_ids = disambiguate(codes, item_ids)
    table = pa.table({
        "item_id": item_ids, "embedding": vectors_column(z), "semantic_ids": ids_column(semantic_ids),
        "encoder_version": [encoder_version] * len(item_ids), "rqvae_version": [version] * len(item_ids),
        "event_timestamp": pa.array([feature_timestamp(lake)] * len(item_ids), pa.timestamp("us", tz="UTC")),
    })
    write_table(table, lake.item_multimodal, ITEM_MULTIMODAL)
    summary: dict[str, Any] = {"version": version, "device": str(device), "items": len(item_ids),
                               "distinct_embeddings": distinct, "codebook_size": plan.codebook_size,
                               "max_disambiguation_index": int(semantic_ids[:, -1].max())}
    for assignment, stats in results.items():
        summary[assignment] = {k: v for k, v in stats.items() if k != "codes"}
        update_metrics(lake.metrics, f"rqvae.{assignment}", summary[assignment])
    update_metrics(lake.metrics, "rqvae.run", {k: summary[k] for k in (
        "version", "device", "items", "distinct_embeddings", "codebook_size", "max_disambiguation_index")})
    return summary
