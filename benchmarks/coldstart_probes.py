"""Where does a synthetic item's topic survive on its way to the ranker? One probe per hand-off.

On synthetic data (``data.source: synthetic``) the item's latent topic drives both its content
and the clicks, so the topic must reach the ranker for a cold item to be ranked by content.
For a built run this measures, on held-out items:

- topic_probe: accuracy of a linear probe (multinomial logistic regression, stratified 3-fold
  cross-validation over the items, so every item is scored by a probe that never saw it) of the
  topic from the frozen towers' pooled features (off_the_shelf.parquet), from the aligned
  embedding z (item_multimodal) and from the semantic ids (one-hot codes of every level);
  chance is the largest topic's share;
- ranker_inputs: for the cold test items (no train event, eval bucket 0), whether the training
  set's item table holds an embedding and semantic ids equal to the encoder's, and whether the
  online store serves the same (Feast online read, as the service does);
- model_use: from metrics.json (after ``saviorrec evaluate``), full, base, the reference and the
  oracle on PV 0, where only content can tell items apart.

    python benchmarks/coldstart_probes.py --config configs/synthetic.yaml [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from saviorrec.config import load_config
from saviorrec.lake import Lake, read_table
from saviorrec.schema import ITEM_MULTIMODAL, ITEM_PV, ITEMS, TRAINING_ITEMS

FOLDS = 3


def _matrix(table: Any, column: str) -> np.ndarray:
    flat = pc.list_flatten(table[column]).to_numpy(zero_copy_only=False)
    return flat.reshape(table.num_rows, -1)


def probe_accuracy(features: np.ndarray, topic: np.ndarray, *, categorical: bool = False,
                   seed: int = 0) -> float:
    """Mean held-out accuracy of a linear topic probe over FOLDS stratified folds."""
    encode = OneHotEncoder(handle_unknown="ignore") if categorical else StandardScaler()
    probe = make_pipeline(encode, LogisticRegression(max_iter=2000, C=1.0))
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(probe, features, topic, cv=folds)))


def topic_probes(lake: Lake) -> dict[str, Any]:
    items = read_table(lake.items, ITEMS).select(["item_id", "topic"]).to_pandas()
    if items["topic"].isna().all():
        raise ValueError(f"{lake.items} has no topic column values: the probes need synthetic data")
    topic_of = dict(zip(items["item_id"], items["topic"], strict=True))
    out: dict[str, Any] = {}
    towers = pq.read_table(lake.encoder_dir / "off_the_shelf.parquet")
    multimodal = read_table(lake.item_multimodal, ITEM_MULTIMODAL)
    for name, table, column, categorical in (
        ("towers", towers, "embedding", False),
        ("z", multimodal, "embedding", False),
        ("semantic_ids", multimodal, "semantic_ids", True),
    ):
        ids = table["item_id"].to_numpy()
        x = _matrix(table, column)
        if categorical:
            x = x[:, :-1]  # the RQ codes; the last column only disambiguates collisions
        y = np.array([topic_of[i] for i in ids])
        out[name] = probe_accuracy(x, y, categorical=categorical)
    counts = np.bincount(items["topic"].to_numpy())
    out["chance"] = float(counts.max() / counts.sum())
    out["items"] = len(items)
    return out


def ranker_inputs(cfg: Any, lake: Lake) -> dict[str, Any]:
    """Cold test items: embedding and ids in the training item table and online, vs encoder."""
    item_pv = read_table(lake.spark("item_pv"), ITEM_PV)
    cold = set(pc.filter(item_pv["item_id"], pc.equal(item_pv["train_pv"], 0)).to_pylist())
    test_items = set(pq.read_table(lake.training("test"), columns=["item_id"])["item_id"]
                     .to_pylist())
    cold_in_test = sorted(cold & test_items)
    encoder = read_table(lake.item_multimodal, ITEM_MULTIMODAL)
    enc_emb = dict(zip(encoder["item_id"].to_pylist(), _matrix(encoder, "embedding"), strict=True))
    enc_ids = dict(zip(encoder["item_id"].to_pylist(), _matrix(encoder, "semantic_ids"),
                       strict=True))
    table = read_table(lake.training_items, TRAINING_ITEMS)
    train_emb = dict(zip(table["item_id"].to_pylist(), _matrix(table, "embedding"), strict=True))
    train_ids = dict(zip(table["item_id"].to_pylist(), _matrix(table, "semantic_ids"),
                         strict=True))

    def compare(embs: dict[int, np.ndarray], sids: dict[int, np.ndarray]) -> dict[str, Any]:
        present = [i for i in cold_in_test if i in embs and np.abs(embs[i]).sum() > 0]
        diffs = [float(np.abs(np.asarray(embs[i], np.float32) - enc_emb[i]).max())
                 for i in present if i in enc_emb]
        same_ids = [bool(np.array_equal(sids[i], enc_ids[i])) for i in present if i in enc_ids]
        return {"present": len(present), "of": len(cold_in_test),
                "max_abs_diff_to_encoder": max(diffs) if diffs else None,
                "semantic_ids_equal": int(sum(same_ids))}

    out = {"cold_test_items": len(cold_in_test),
           "training_item_table": compare(train_emb, train_ids)}
    try:
        from feature_repo.online import read_items
        from feature_repo.store import get_store

        values, _missing = read_items(get_store(cfg), cold_in_test)
        online_emb = {i: np.asarray(v["embedding"], np.float32) for i, v in values.items()
                      if v["embedding"] is not None}
        online_ids = {i: np.asarray(v["semantic_ids"]) for i, v in values.items()
                      if v["semantic_ids"] is not None}
        out["online_store"] = compare(online_emb, online_ids)
    except Exception as e:  # noqa: BLE001 - reported, the other probes still stand
        out["online_store"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def model_use(lake: Lake) -> dict[str, Any] | None:
    if not lake.metrics.is_file():
        return None
    m = json.loads(lake.metrics.read_text())
    ranker, ref = m.get("ranker", {}), m.get("reference", {})

    def pv0(node: dict[str, Any] | None, key: str = "auc_by_bucket") -> float | None:
        value = (node or {}).get(key, {}).get("0")
        return value.get("mean") if isinstance(value, dict) else value

    return {
        "pv0": {"full": pv0(ranker.get("full")), "base": pv0(ranker.get("base")),
                "reference": pv0(ref.get("smoothed_mean")), "oracle": pv0(ref.get("oracle"))},
        "full_minus_base_pv0": (ranker.get("full_minus_base", {}).get("by_bucket", {})
                                .get("0")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default=None, help="JSON file (default: print)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if cfg.data.source != "synthetic":
        parser.error(f"{args.config}: data.source is {cfg.data.source!r}; the probes need "
                     "synthetic data (its items carry their latent topic)")
    lake = Lake.from_config(cfg)
    result = {"config": args.config, "topic_probe": topic_probes(lake),
              "ranker_inputs": ranker_inputs(cfg, lake), "model_use": model_use(lake)}
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
