"""Semantic ids on a run's catalogue: Sinkhorn against argmin, per-level utilisation, unique ids.

Trains the RQ-VAE twice on a run's item embeddings z exactly as the RQ stage does
(encoder_torch.rq_stage.fit: the config's levels, the codebook size and batch the stage plans
for the catalogue, the config's schedule), once with Sinkhorn assignment in training and once
with argmin, and reports for each the share of every level's codes the items use (nearest-code
ids, as written), the share of items whose L codes no other item has (before the disambiguation
index), the reconstruction error and the training time; and the checks of issue 27: Sinkhorn's
utilisation >= argmin's on every level, unique ratio >= 0.98. ``distinct_embeddings`` bounds
the unique ratio: items with equal z get equal ids under any quantizer.

    .venv/bin/python benchmarks/rqvae_utilisation.py --name movielens --config configs/movielens.yaml
    .venv/bin/python benchmarks/rqvae_utilisation.py --name movielens-quick --quick
    .venv/bin/python benchmarks/rqvae_utilisation.py --name synthetic --config configs/synthetic.yaml

Each catalogue's results go into benchmarks/results/rqvae_utilisation.json under
catalogues.<name>.<label> (other entries are kept). ``--label before`` with the previous
encoder_torch first on PYTHONPATH records that code's figures on the same embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    REPO_ROOT,
    device_info,
    ensure_repo_on_path,
    library_versions,
    run_header,
    write_json_atomic,
)

ensure_repo_on_path()
import torch

from encoder_torch.data import coclick_pairs, read_items
from encoder_torch.rq_stage import fit
from encoder_torch.semantic_ids import collision_stats, utilization_per_level
from saviorrec.config import Config, load_config
from saviorrec.lake import Lake, read_table
from saviorrec.schema import EMBEDDINGS

OUT = REPO_ROOT / "benchmarks" / "results" / "rqvae_utilisation.json"
UNIQUE_TARGET = 0.98  # issue 27 and issue 29: unique ids before disambiguation


def catalogue(cfg: Config) -> tuple[np.ndarray, np.ndarray, str]:
    """(z [n, d] in item_id order, co-click pairs [P, 2] as rows of z, encoder version)."""
    lake = Lake.from_config(cfg)
    item_ids = read_items(lake)["item_id"].to_numpy(np.int64)
    emb = read_table(lake.encoder_embeddings, EMBEDDINGS).to_pandas().sort_values("item_id")
    if not np.array_equal(emb["item_id"].to_numpy(np.int64), item_ids):
        raise ValueError(f"{lake.encoder_embeddings} does not hold exactly the items of {lake.items}")
    z = np.stack(emb["embedding"].to_numpy()).astype(np.float32)
    return z, coclick_pairs(lake, item_ids), str(emb["encoder_version"].iloc[0])


def measure(cfg: Config, z: np.ndarray, pairs: np.ndarray, assignment: str) -> dict[str, Any]:
    x = torch.from_numpy(z)
    t0 = time.perf_counter()
    model, stats = fit(cfg, assignment=assignment, x=x, pairs=pairs)
    codes = stats["codes"]
    k = model.config.codebook_size
    return {"codebook_size": k, "batch_size": stats.get("batch_size", cfg.rqvae.batch_size),
            "utilization_per_level": [round(u, 4) for u in utilization_per_level(codes, codebook_size=k)],
            "unique_ratio": round(collision_stats(codes)["unique_ratio"], 4),
            "recon_mse": stats["recon_mse"], "seconds": round(time.perf_counter() - t0, 1)}


def checks(result: dict[str, Any]) -> dict[str, bool]:
    sinkhorn, argmin = result["sinkhorn"], result["argmin"]
    return {"sinkhorn_utilisation_at_least_argmin_every_level": all(
                s >= a for s, a in zip(sinkhorn["utilization_per_level"],
                                       argmin["utilization_per_level"], strict=True)),
            f"sinkhorn_unique_at_least_{UNIQUE_TARGET}": sinkhorn["unique_ratio"] >= UNIQUE_TARGET,
            f"argmin_unique_at_least_{UNIQUE_TARGET}": argmin["unique_ratio"] >= UNIQUE_TARGET}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the catalogue's key in the results file")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "movielens.yaml")
    parser.add_argument("--quick", action="store_true", help="the --quick run of --config")
    parser.add_argument("--label", default="after", help="'after' (this code) or 'before'")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overlays = (REPO_ROOT / "configs" / "quick.yaml",) if args.quick else ()
    cfg = load_config(args.config, overlays)
    if args.quick:  # the CLI's folder for a quick run (saviorrec/cli.py)
        cfg = cfg.with_overrides(run={"root": f"{cfg.run.root.rstrip('/')}-quick"})
    z, pairs, encoder_version = catalogue(cfg)
    result: dict[str, Any] = {
        "items": len(z), "distinct_embeddings": len(np.unique(z, axis=0)), "coclick_pairs": len(pairs),
        "encoder_version": encoder_version, "levels": cfg.rqvae.levels,
        "configured_codebook_size": cfg.rqvae.codebook_size, "epochs": cfg.rqvae.epochs}
    for assignment in ("sinkhorn", "argmin"):
        result[assignment] = measure(cfg, z, pairs, assignment)
        print(f"{args.name} [{args.label}] {assignment}: K={result[assignment]['codebook_size']} "
              f"utilisation {result[assignment]['utilization_per_level']} "
              f"unique {result[assignment]['unique_ratio']:.4f} ({result[assignment]['seconds']} s)")
    result["checks"] = checks(result)
    result.update(run_header(sys.argv), versions=library_versions(("numpy", "torch", "faiss-cpu")),
                  machine=device_info())
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data.setdefault("catalogues", {}).setdefault(args.name, {})[args.label] = result
    write_json_atomic(args.out, data)
    print(json.dumps(result["checks"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
