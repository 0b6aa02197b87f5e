"""How much of the multimodal embedding z the RQ semantic ids keep: the no_raw_mm ablation's input.

no_raw_mm (paper Table 3, "w/o multimodal embedding") replaces z by the MBA's output alone,
z_align = fusion(normalise(concat(C_1[c_1], ..., C_L[c_L]))), its codebook C initialised from the
RQ codebook. It loses what the codes do not say about z. This script measures that on a run's
items: the share of z's variance (R^2) that a least-squares linear map (the fusion layer's form,
with a bias) recovers from the first l levels' RQ codebook rows, concatenated and normalised as
the MBA does, fitted on 80% of the items and scored on the other 20%. Also the number of
distinct code tuples. The ranker's fusion layer and codebook train end to end, so it can do at
least as well as this linear map with the codebook frozen.

    .venv/bin/python benchmarks/rq_code_information.py --config configs/movielens.yaml

Writes benchmarks/results/rq_code_information.json (command, date, numbers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import REPO_ROOT, ensure_repo_on_path, run_header, write_json_atomic

ensure_repo_on_path()
from saviorrec.config import load_config
from saviorrec.lake import Lake
from tf_ranker.data import load_items
from tf_ranker.layers import ModalBehaviorAlignment
from tf_ranker.train import read_rqvae


def code_features(codebook: np.ndarray, codes: np.ndarray, levels: int,
                  norm_epsilon: float) -> np.ndarray:
    """[M, levels * width]: ModalBehaviorAlignment.code_features of the first ``levels`` levels
    with ``codebook`` [L, K, width] as its codebook (what no_raw_mm starts from)."""
    _, size, width = codebook.shape
    mba = ModalBehaviorAlignment(levels, size, width, skip=False, norm_epsilon=norm_epsilon)
    mba.build((None, width), (None, levels))
    mba.set_codebook(codebook[:levels])
    return np.asarray(mba.code_features(codes[:, :levels]), dtype="float64")


def held_out_r2(x: np.ndarray, z: np.ndarray, *, test_fraction: float = 0.2,
                seed: int = 0) -> float:
    """R^2 on held-out rows of the least-squares map [x, 1] -> z fitted on the others: 1 minus
    the test residual sum of squares over the test rows' sum of squares about the TRAIN mean."""
    if len(x) != len(z) or len(x) < 10:
        raise ValueError(f"need >= 10 matching rows, got x {len(x)} and z {len(z)}")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = round(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    design = np.c_[x.astype("float64"), np.ones(len(x))]
    weights, *_ = np.linalg.lstsq(design[train], z[train].astype("float64"), rcond=None)
    residual = design[test] @ weights - z[test]
    spread = z[test] - z[train].mean(axis=0)
    return float(1.0 - (residual ** 2).sum() / (spread ** 2).sum())


def measure(config_path: Path) -> dict[str, Any]:
    cfg = load_config(config_path)
    lake = Lake.from_config(cfg)
    codebook, rqvae_version = read_rqvae(lake)
    if codebook is None:
        raise SystemExit(f"{lake.rqvae_codebooks} missing: run the encoder stage first")
    items = load_items(lake.training_items)
    rows = np.flatnonzero(np.abs(items.embedding).sum(axis=1) > 0)  # the catalogue's items
    levels = int(codebook.shape[0])
    z, codes = items.embedding[rows], items.semantic_ids[rows, :levels]
    eps = cfg.ranker.mba_norm_epsilon
    r2 = {str(level): round(held_out_r2(code_features(codebook, codes, level, eps), z), 4)
          for level in range(1, levels + 1)}
    return {
        "config": str(config_path),
        "rqvae_version": rqvae_version,
        "items": len(rows),
        "codebook_shape": [int(s) for s in codebook.shape],
        "distinct_code_tuples": len(np.unique(codes, axis=0)),
        "held_out_r2_by_levels": r2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "movielens.yaml")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "benchmarks" / "results" / "rq_code_information.json")
    args = parser.parse_args(argv)
    result = {**run_header(sys.argv), **measure(args.config)}
    print(f"{result['items']} items, codebook {result['codebook_shape']}, "
          f"{result['distinct_code_tuples']} distinct code tuples")
    for level, r2 in result["held_out_r2_by_levels"].items():
        print(f"levels 1..{level}: held-out R^2 of z from the codes {r2:.3f}")
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
