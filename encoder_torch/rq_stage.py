"""The RQ-VAE stage: train on the SaviorEnc embeddings, write semantic ids, codebooks, metrics."""

from __future__ import annotations

import logging
import time
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
from encoder_torch.semantic_ids import collision_stats, disambiguate, utilization_per_level
from encoder_torch.train_rqvae import train_rqvae
from saviorrec.config import Config
from saviorrec.lake import Lake, read_table, write_table
from saviorrec.metrics import update_metrics
from saviorrec.schema import EMBEDDINGS, ITEM_MULTIMODAL

log = logging.getLogger(__name__)


def rqvae_model_config(cfg: Config, *, assignment: str, input_dim: int) -> RQVAEModelConfig:
    rc = cfg.rqvae
    return RQVAEModelConfig(input_dim=input_dim, latent_dim=rc.latent_dim, hidden=tuple(rc.hidden),
                            levels=rc.levels, codebook_size=rc.codebook_size, assignment=assignment,
                            sinkhorn_epsilon=rc.sinkhorn_epsilon, sinkhorn_iters=rc.sinkhorn_iters,
                            beta=rc.beta)


def fit(cfg: Config, *, assignment: str, x: torch.Tensor, pairs: np.ndarray) -> tuple[RQVAE, dict[str, Any]]:
    """Train one RQ-VAE; returns it with its code statistics (nearest-code ids of every item)."""
    rc = cfg.rqvae
    torch.manual_seed(rc.seed)
    model = RQVAE(config=rqvae_model_config(cfg, assignment=assignment, input_dim=x.shape[1])).to(x.device)
    t0 = time.perf_counter()
    history = train_rqvae(model=model, x=x, pairs=pairs, epochs=rc.epochs, batch_size=rc.batch_size,
                          lr=rc.lr, lambda_recon=rc.lambda_recon, lambda_commit=rc.lambda_commit,
                          temperature=rc.temperature, dead_code_every=rc.dead_code_every,
                          seed=rc.seed, kmeans=rc.kmeans_init, desc=f"rqvae[{assignment}]")
    codes = model.semantic_codes(x)
    with torch.no_grad():
        recon = torch.nn.functional.mse_loss(model.decode(codes), x).item()
    codes_np = codes.cpu().numpy()
    stats = {"utilization_per_level": utilization_per_level(codes_np, codebook_size=rc.codebook_size),
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
    runs = [rc.assignment] + (["argmin"] if rc.compare_argmin and rc.assignment != "argmin" else [])
    results = {}
    for assignment in runs:
        model_a, results[assignment] = fit(cfg, assignment=assignment, x=x, pairs=pairs)
        if assignment == rc.assignment:
            model = model_a
    codes = results[rc.assignment]["codes"]
    version = save_checkpoint(lake.rqvae_checkpoint, model=model, config=model.config,
                              encoder_version=encoder_version)
    write_npy(lake.rqvae_codebooks, model.codebooks.detach().cpu().numpy().astype(np.float32))
    write_json(lake.rqvae_version, {
        "rqvae_version": version, "encoder_version": encoder_version, "levels": rc.levels,
        "codebook_size": rc.codebook_size, "latent_dim": rc.latent_dim})
    semantic_ids = disambiguate(codes, item_ids)
    table = pa.table({
        "item_id": item_ids, "embedding": vectors_column(z), "semantic_ids": ids_column(semantic_ids),
        "encoder_version": [encoder_version] * len(item_ids), "rqvae_version": [version] * len(item_ids),
        "event_timestamp": pa.array([feature_timestamp(lake)] * len(item_ids), pa.timestamp("us", tz="UTC")),
    })
    write_table(table, lake.item_multimodal, ITEM_MULTIMODAL)
    summary: dict[str, Any] = {"version": version, "device": str(device), "items": len(item_ids),
                               "max_disambiguation_index": int(semantic_ids[:, -1].max())}
    for assignment, stats in results.items():
        summary[assignment] = {k: v for k, v in stats.items() if k != "codes"}
        update_metrics(lake.metrics, f"rqvae.{assignment}", summary[assignment])
    update_metrics(lake.metrics, "rqvae.run", {k: summary[k] for k in ("version", "device", "items",
                                                                       "max_disambiguation_index")})
    return summary
