"""The cold-start claim on synthetic data, where the answer is known: probes and results.

``probe``: where does a synthetic item's topic survive on its way to the ranker? One probe per
hand-off. ``summarize``: the results of built and evaluated runs (one per event count) beside
their probes, into benchmarks/results/synthetic_coldstart.json.

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

    python benchmarks/synthetic_coldstart.py probe --config configs/synthetic.yaml
    python benchmarks/synthetic_coldstart.py summarize --run 100k=configs/synthetic.yaml \
        --run 1M=configs/synthetic_1m.yaml

``ceilings``: what content alone can reach in this world, where an item's text and image carry
its topic and nothing of its quality or popularity (saviorrec/datasets/synthetic.py). Added to
each run's entry of the results file, in place:

- content_oracle: the AUC of P(click | user, the item's topic) (the oracle with the item's
  quality integrated out, ``synthetic.content_click_probability``) on the same test rows,
  overall and per PV bucket: on PV 0 (no event, so no model can know the quality) the best any
  model can do; with the share of the reference-to-content-oracle gap that full closes there;
- encoder_hit_ceiling: the expected i2i Hit@K of an embedding that knows each item's topic
  exactly and nothing else (its K neighbours drawn from the query's topic), on the encoder's
  own next-click pairs: the best content-only Hit@K, beside the encoders' figures.

    python benchmarks/synthetic_coldstart.py ceilings --run 100k=configs/synthetic.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _bench_common import (
    REPO_ROOT,
    device_info,
    library_versions,
    run_header,
    write_json_atomic,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from encoder_torch.data import next_click_pairs
from saviorrec.config import load_config
from saviorrec.datasets import synthetic
from saviorrec.lake import Lake, read_table
from saviorrec.metrics import auc, auc_by_bucket
from saviorrec.schema import ITEM_MULTIMODAL, ITEM_PV, ITEMS, TEST, TRAINING_ITEMS, VALID
from tf_ranker.data import fixed_lists

FOLDS = 3


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
    towers = pq.read_table(lake.off_the_shelf_embeddings)
    multimodal = read_table(lake.item_multimodal, ITEM_MULTIMODAL)
    for name, table, column, categorical in (
        ("towers", towers, "embedding", False),
        ("z", multimodal, "embedding", False),
        ("semantic_ids", multimodal, "semantic_ids", True),
    ):
        ids = table["item_id"].to_numpy()
        x = fixed_lists(table[column], "int64" if categorical else "float32")
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
    table = read_table(lake.training_items, TRAINING_ITEMS)
    enc_emb, enc_ids, train_emb, train_ids = (
        dict(zip(t["item_id"].to_pylist(), fixed_lists(t[column], dtype), strict=True))
        for t, column, dtype in ((encoder, "embedding", "float32"),
                                 (encoder, "semantic_ids", "int64"),
                                 (table, "embedding", "float32"), (table, "semantic_ids", "int64")))

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
        return _mean(value)

    return {
        "pv0": {"full": pv0(ranker.get("full")), "base": pv0(ranker.get("base")),
                "reference": pv0(ref.get("smoothed_mean")), "oracle": pv0(ref.get("oracle"))},
        "full_minus_base_pv0": (ranker.get("full_minus", {}).get("base", {}).get("by_bucket", {})
                                .get("0")),
    }


def _synthetic_run(config: str, need: str) -> tuple[Any, Lake]:
    """The config and lake of a synthetic run; an error naming ``need`` for any other source."""
    cfg = load_config(config)
    if cfg.data.source != "synthetic":
        raise ValueError(f"{config}: data.source is {cfg.data.source!r}; {need} need synthetic "
                         "data (its items carry their latent topic)")
    return cfg, Lake.from_config(cfg)


def probe(config: str) -> dict[str, Any]:
    cfg, lake = _synthetic_run(config, "the probes")
    return {"config": config, "topic_probe": topic_probes(lake),
            "ranker_inputs": ranker_inputs(cfg, lake), "model_use": model_use(lake)}


def _mean(node: Any) -> Any:
    """A statistic of metrics.json: the mean over seeds where it has seeds, else the value."""
    return node.get("mean") if isinstance(node, dict) else node


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def metric_results(m: dict[str, Any], buckets: list[str]) -> dict[str, Any]:
    """From one metrics.json: AUC overall and per PV bucket of the reference, base, full and the
    oracle on the same test rows, full - base per bucket with its paired interval, the share of
    the reference-to-oracle gap full closes on PV 0, and the validation AUCs."""
    models = {"reference": "reference.smoothed_mean", "oracle": "reference.oracle",
              "base": "ranker.base", "full": "ranker.full"}

    overall = {name: _mean(_get(m, f"{key}.auc")) for name, key in models.items()}
    by_bucket: dict[str, Any] = {}
    for bucket in buckets:
        row = {name: _mean(_get(m, f"{key}.auc_by_bucket.{bucket}"))
               for name, key in models.items()}
        gap = _get(m, f"ranker.full_minus.base.by_bucket.{bucket}") or {}
        row["full_minus_base"] = gap.get("diff")
        row["full_minus_base_ci95"] = gap.get("ci95")
        by_bucket[bucket] = row
    pv0 = by_bucket.get("0", {})
    closed = None
    if None not in (pv0.get("full"), pv0.get("reference"), pv0.get("oracle")):
        closed = (pv0["full"] - pv0["reference"]) / (pv0["oracle"] - pv0["reference"])
    return {
        "overall": overall,
        "by_bucket": by_bucket,
        "pv0_gap_closed": closed,
        "full_minus_base": _get(m, "ranker.full_minus.base"),
        "seeds": {v: sorted((_get(m, f"ranker.{v}.auc.seeds") or {}).keys()) for v in ("base", "full")},
        "valid_auc": {v: _get(m, f"ranker.{v}.valid_auc") for v in ("base", "full")},
    }


def content_oracle(cfg: Any, lake: Lake, m: dict[str, Any]) -> dict[str, Any]:
    """AUC of the content oracle on the test rows, overall and per eval PV bucket, and the share
    of the PV-0 gap between the reference and it that full closes (docstring: ``ceilings``)."""
    test = pq.read_table(lake.training(TEST),
                         columns=["user_id", "item_id", "label", "eval_pv_bucket"]).to_pandas()
    world = synthetic.make_world(cfg.synthetic)
    score = synthetic.content_click_probability(world, test["user_id"].to_numpy() - 1,
                                                test["item_id"].to_numpy() - 1,
                                                cfg.labels.click_threshold)
    labels = test["label"].to_numpy()
    by_bucket = auc_by_bucket(labels, score, test["eval_pv_bucket"].to_numpy(),
                              cfg.stats.bucket_labels())
    out: dict[str, Any] = {"auc": auc(labels, score), "auc_by_bucket": by_bucket,
                           "rows": len(test)}
    full, ref = (_mean(_get(m, f"{key}.auc_by_bucket.0"))
                 for key in ("ranker.full", "reference.smoothed_mean"))
    if _number(full) and _number(ref) and _number(by_bucket.get("0")):
        out["pv0_gap_closed"] = (full - ref) / (by_bucket["0"] - ref)
    return out


def encoder_hit_ceiling(cfg: Any, lake: Lake) -> dict[str, Any]:
    """Expected Hit@K, on each split's next-click pairs, of an embedding that knows every item's
    topic and nothing else: its K neighbours are K of the query's topic's other items, drawn
    uniformly, so a pair scores K / (items of the topic - 1) when the next click shares the
    query's topic (and is not the query itself: retrieval excludes the query), else 0."""
    items = read_table(lake.items, ITEMS).select(["item_id", "topic"]).to_pandas()
    out: dict[str, Any] = {"k": cfg.encoder.hit_k}
    for split in (VALID, TEST):
        queries, targets = next_click_pairs(lake, split=split)
        out[split] = topic_hit_ceiling(items["item_id"].to_numpy(), items["topic"].to_numpy(),
                                       queries, targets, k=cfg.encoder.hit_k)
    return out


def topic_hit_ceiling(item_ids: np.ndarray, topics: np.ndarray, queries: np.ndarray,
                      targets: np.ndarray, *, k: int) -> dict[str, Any]:
    """Expected Hit@k over (query, target) pairs when each query's k neighbours are drawn
    uniformly from the other items of its topic (all of them when fewer than k)."""
    topic_of = dict(zip(item_ids.tolist(), topics.tolist(), strict=True))
    size = dict(zip(*np.unique(topics, return_counts=True), strict=True))
    q_topic = np.array([topic_of[i] for i in queries.tolist()])
    same = (q_topic == np.array([topic_of[i] for i in targets.tolist()])) & (queries != targets)
    others = np.array([size[t] for t in q_topic]) - 1
    per_pair = np.where(same, np.minimum(1.0, k / np.maximum(others, 1)), 0.0)
    return {"expected_hit": float(per_pair.mean()) if len(per_pair) else float("nan"),
            "same_topic_share": float(same.mean()) if len(same) else float("nan"),
            "pairs": len(queries)}


def ceilings(config: str) -> dict[str, Any]:
    cfg, lake = _synthetic_run(config, "the ceilings")
    m = json.loads(lake.metrics.read_text()) if lake.metrics.is_file() else {}
    return {"content_oracle": content_oracle(cfg, lake, m),
            "encoder_hit_ceiling": encoder_hit_ceiling(cfg, lake)}


def _number(value: Any) -> bool:
    return value is not None and not math.isnan(value)


def compare_validation(incumbent: Path, challenger: Path) -> dict[str, Any]:
    """Validation AUC of two runs' rankers (their models/ranker folders), paired by variant and
    seed: challenger - incumbent per pair, and the mean, standard error and t of the gains over
    all pairs and per variant (tools/make_sweep.py's rule keeps the incumbent unless t > 2)."""
    pairs: dict[str, dict[str, float]] = {}
    for meta in sorted(challenger.glob("*/seed*/meta.json")):
        other = incumbent / meta.parent.parent.name / meta.parent.name / "meta.json"
        if other.is_file():
            key = f"{meta.parent.parent.name}/{meta.parent.name}"
            inc, cha = (json.loads(p.read_text()) for p in (other, meta))
            a, b = inc["val_auc"], cha["val_auc"]
            pairs[key] = {"incumbent": a, "challenger": b, "gain": b - a}
            # per evaluation PV bucket where both metas have it (ranker meta val_auc_by_bucket)
            both = set(inc.get("val_auc_by_bucket") or {}) & set(cha.get("val_auc_by_bucket") or {})
            gains = {k: cha["val_auc_by_bucket"][k] - inc["val_auc_by_bucket"][k] for k in both
                     if _number(inc["val_auc_by_bucket"][k])
                     and _number(cha["val_auc_by_bucket"][k])}  # a one-class bucket: null/NaN
            if gains:
                pairs[key]["gain_by_bucket"] = gains

    def stats(gains: list[float]) -> dict[str, Any]:
        g = np.array(gains)
        se = float(g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else None
        return {"runs": len(g), "mean_gain": float(g.mean()), "se": se,
                "t": float(g.mean() / se) if se else None}

    out: dict[str, Any] = {"incumbent": str(incumbent), "challenger": str(challenger),
                           "pairs": pairs, "all": stats([p["gain"] for p in pairs.values()])}
    for variant in sorted({k.split("/")[0] for k in pairs}):
        mine = {k: p for k, p in pairs.items() if k.startswith(variant + "/")}
        out[variant] = stats([p["gain"] for p in mine.values()])
        buckets = set.intersection(*(set(p.get("gain_by_bucket", {})) for p in mine.values()))
        if buckets:
            out[variant]["by_bucket"] = {b: stats([p["gain_by_bucket"][b] for p in mine.values()])
                                         for b in sorted(buckets)}
    return out


def run_results(config: str) -> dict[str, Any]:
    """One built (and, for the rankers, evaluated) run: metric_results beside the encoder's
    Hit@K, the semantic ids and the probes."""
    cfg = load_config(config)
    lake = Lake.from_config(cfg)
    m = json.loads(lake.metrics.read_text())
    probes = probe(config)
    return {
        "config": config,
        "events": json.loads(lake.prepare_summary.read_text())["events"],
        **metric_results(m, cfg.stats.bucket_labels()),
        "encoder_hit": _get(m, "encoder"),
        "rqvae": _get(m, "rqvae"),
        "topic_probe": probes["topic_probe"],
        "ranker_inputs": probes["ranker_inputs"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="the topic probes of one built run")
    p.add_argument("--config", required=True)
    c = sub.add_parser("ceilings", help="content-only ceilings of built runs -> their entries")
    c.add_argument("--run", action="append", required=True, metavar="LABEL=CONFIG")
    c.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" /
                                        "synthetic_coldstart.json"))
    s = sub.add_parser("summarize", help="results of evaluated runs -> JSON")
    s.add_argument("--run", action="append", required=True, metavar="LABEL=CONFIG")
    s.add_argument("--step", action="append", default=[], metavar="LABEL=METRICS_JSON",
                   help="an earlier step's metrics.json (e.g. before a fix), AUCs only")
    s.add_argument("--compare", action="append", default=[],
                   metavar="LABEL=INCUMBENT_RANKER_DIR,CHALLENGER_RANKER_DIR",
                   help="paired validation AUC of two settings (what a choice was made on)")
    s.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" /
                                        "synthetic_coldstart.json"))
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(probe(args.config), indent=2, sort_keys=True))
        return 0
    if args.command == "ceilings":
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.is_file() else {}
        for spec in args.run:
            label, _, config = spec.partition("=")
            if not config:
                parser.error(f"--run {spec!r}: expected LABEL=CONFIG")
            result.setdefault(label, {}).update(ceilings(config))
            result.setdefault("updates", []).append(
                {**run_header(sys.argv), "what": f"key {label}: content_oracle and "
                 f"encoder_hit_ceiling added from {config} (ceilings)"})
            print(label, json.dumps(result[label]["content_oracle"], indent=1),
                  json.dumps(result[label]["encoder_hit_ceiling"], indent=1))
        write_json_atomic(out, result)
        return 0
    result: dict[str, Any] = run_header(sys.argv)
    result["machine"] = device_info()
    result["versions"] = library_versions()
    for spec in args.run:
        label, _, config = spec.partition("=")
        if not config:
            parser.error(f"--run {spec!r}: expected LABEL=CONFIG")
        result[label] = run_results(config)
    buckets = load_config(args.run[0].partition("=")[2]).stats.bucket_labels()
    steps = {}
    for spec in args.step:
        label, _, path = spec.partition("=")
        steps[label] = {"metrics": path,
                        **metric_results(json.loads(Path(path).read_text()), buckets)}
    if steps:
        result["steps"] = steps
    for spec in args.compare:
        label, _, dirs = spec.partition("=")
        incumbent, _, challenger = dirs.partition(",")
        result.setdefault("choice", {})[label] = compare_validation(Path(incumbent),
                                                                    Path(challenger))
    write_json_atomic(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict) and "overall" in v},
                     indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
