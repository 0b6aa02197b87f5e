"""AUC of the trained ranker variants on the TEST split, into metrics.json.

For each variant and each seed with a predictions_test.parquet: AUC overall and per PV bucket
(eval_pv_bucket, labelled by cfg.stats.bucket_labels()) with a 95% percentile bootstrap interval
(cfg.ranker.bootstrap_samples resamples). Reported: the mean over seeds of the AUC and of each
interval bound, and the per-seed AUCs. Also the non-neural reference (smoothed user-mean +
item-mean click rate, logit sum, fitted on TRAIN rows, scored on TEST) and the paired bootstrap
of full minus each other variant on the same test rows (per seed, averaged over the seeds both
variants have); for base also per PV bucket.

Fig. 3: for variants with MBA, the per-level importance that training wrote into each seed's
meta (mean L2 norm of the used MBA codebook rows and of the fusion weights per level),
averaged over the seeds.

Beside them, the VALIDATION AUC each seed's training recorded (the meta's val_auc): what every
choice was made on, so a reader sees how far test moves from it.

Keys: ranker.<variant>.auc.{mean,ci95,seeds}, ranker.<variant>.auc_by_bucket.<bucket>.{mean,ci95},
ranker.<variant>.valid_auc.{mean,seeds},
ranker.<variant>.mba_level_importance.{codebook,fusion,codebook_rows_used,levels,seeds} (the
first three: lists over the levels), reference.smoothed_mean.auc(.ci95, _by_bucket),
ranker.full_minus.<variant>.{diff,ci95,seeds} (full minus every other variant: Table 3 with
intervals; for base also by_bucket.<bucket> and by_seen_bucket.<bucket>, the cold-start gain;
each statistic is stored once: the key ranker.full_minus_base, which repeated
ranker.full_minus.base, is gone and removed from a metrics.json evaluated before),
ranker.<variant>.auc_by_seen_bucket (AUC per bucket of the candidate's PV at its sample time).

On synthetic data the generator knows each event's true click probability (Lake.oracle, written
by ``data prepare``, read by nothing but this): reference.oracle holds its AUC on the same test
rows, overall, per bucket and per seen bucket, the ceiling that the models and the reference
sit under.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from saviorrec.config import Config
from saviorrec.lake import Lake, read_table
from saviorrec.metrics import (
    auc,
    auc_by_bucket,
    bootstrap_auc,
    drop_metrics,
    paired_bootstrap_diff,
    update_metrics,
)
from saviorrec.schema import ITEM_STAT_NUMERIC, ORACLE, PREDICTIONS, TEST, TRAIN
from tf_ranker.data import Samples, load_samples, load_stats


def smoothed_mean_scores(train_users: np.ndarray, train_items: np.ndarray,
                         train_labels: np.ndarray, users: np.ndarray, items: np.ndarray,
                         strength: float) -> np.ndarray:
    """logit(user rate) + logit(item rate), each smoothed towards the train click rate p:
    rate = (clicks + strength * p) / (views + strength); unseen users/items get p."""
    p = float(np.mean(train_labels))

    def rate(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(keys, return_inverse=True)
        views = np.bincount(inverse, minlength=uniq.size)
        clicks = np.bincount(inverse, weights=train_labels, minlength=uniq.size)
        smoothed = (clicks + strength * p) / (views + strength)
        if uniq.size == 0:
            return np.full(query.shape, p)
        pos = np.clip(np.searchsorted(uniq, query), 0, uniq.size - 1)
        return np.where(uniq[pos] == query, smoothed[pos], p)

    def logit(x: np.ndarray) -> np.ndarray:
        x = np.clip(x, 1e-6, 1 - 1e-6)
        return np.log(x / (1 - x))

    return logit(rate(train_users, users)) + logit(rate(train_items, items))


ORACLE_KEYS = ("user_id", "item_id", "event_timestamp")


def oracle_scores(lake: Lake) -> np.ndarray | None:
    """The true click probability of each test row, in the test split's order; None when the
    run has no oracle (MovieLens). Every test row must find exactly one oracle row."""
    if not lake.oracle.is_file():
        return None
    test = pq.read_table(lake.training(TEST), columns=list(ORACLE_KEYS)).to_pandas()
    oracle = read_table(lake.oracle, ORACLE).to_pandas()
    duplicated = oracle.duplicated(list(ORACLE_KEYS))
    if duplicated.any():
        raise ValueError(f"{lake.oracle}: {int(duplicated.sum())} rows repeat a (user_id, "
                         f"item_id, event_timestamp) key, e.g. {oracle[duplicated].iloc[0].to_dict()}")
    joined = pd.merge(test, oracle, on=list(ORACLE_KEYS), how="left", sort=False)
    missing = joined["click_probability"].isna()
    if missing.any():
        raise ValueError(f"{lake.oracle}: {int(missing.sum())} of {len(test)} test rows have no "
                         f"oracle row, e.g. {joined[missing].iloc[0][list(ORACLE_KEYS)].to_dict()}"
                         " (was the lake prepared by another run?)")
    return joined["click_probability"].to_numpy()


def _read_predictions(lake: Lake, variant: str, seeds: tuple[int, ...]) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for seed in seeds:
        path = lake.ranker(variant, seed).predictions
        if path.is_file():
            table = read_table(path, PREDICTIONS)
            out[seed] = {c: table[c].to_numpy() for c in table.column_names}
    return out


def _metas(lake: Lake, variant: str, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """The meta of each of ``seeds`` that has one, by seed (as a string)."""
    paths = {str(seed): lake.ranker(variant, seed).meta for seed in seeds}
    return {seed: json.loads(path.read_text()) for seed, path in paths.items() if path.is_file()}


def level_importance(metas: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Mean over the seeds of the metas' mba_level_importance; None if a seed has none."""
    per_seed = {seed: meta.get("mba_level_importance") for seed, meta in metas.items()}
    if not per_seed or any(v is None for v in per_seed.values()):
        return None
    first = next(iter(per_seed.values()))
    return {
        **{key: [float(x) for x in np.mean([v[key] for v in per_seed.values()], axis=0)]
           for key in ("codebook", "fusion", "codebook_rows_used")},
        "levels": len(first["codebook"]),
        "seeds": per_seed,
    }


def valid_auc(metas: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Mean over the seeds of the VALIDATION AUC training wrote (best weights, every valid row):
    what early stopping and every configuration choice saw, reported beside test so the gap
    between the two is in plain view. None if a seed has none."""
    per_seed = {seed: meta.get("val_auc") for seed, meta in metas.items()}
    if not per_seed or any(v is None for v in per_seed.values()):
        return None
    return {"mean": float(np.mean(list(per_seed.values()))), "seeds": per_seed}


def _summary(labels: np.ndarray, scores: list[np.ndarray], n: int) -> dict[str, Any]:
    aucs = [auc(labels, s) for s in scores]
    cis = np.array([bootstrap_auc(labels, s, n_resamples=n, seed=i) for i, s in enumerate(scores)])
    return {"mean": float(np.mean(aucs)), "ci95": [float(x) for x in cis.mean(axis=0)], "aucs": aucs}


def evaluate_variant(cfg: Config, preds: dict[int, dict[str, np.ndarray]]) -> dict[str, Any]:
    seeds = sorted(preds)
    first = preds[seeds[0]]
    for s in seeds[1:]:
        if not np.array_equal(preds[s]["item_id"], first["item_id"]):
            raise ValueError(f"seed {s} scored different test rows than seed {seeds[0]}")
    labels, buckets = first["label"], first["eval_pv_bucket"]
    scores = [preds[s]["score"] for s in seeds]
    n = cfg.ranker.bootstrap_samples
    overall = _summary(labels, scores, n)
    by_bucket = {}
    for i, name in enumerate(cfg.stats.bucket_labels()):
        mask = buckets == i
        summary = _summary(labels[mask], [s[mask] for s in scores], n)
        by_bucket[name] = {"mean": summary["mean"], "ci95": summary["ci95"]}
    return {
        "auc": {"mean": overall["mean"], "ci95": overall["ci95"],
                "seeds": {str(s): a for s, a in zip(seeds, overall["aucs"], strict=True)}},
        "auc_by_bucket": by_bucket,
    }


def run_evaluate(cfg: Config, variants: list[str] | None = None) -> dict[str, Any]:
    """Evaluate every variant with predictions (all of cfg.ranker.variants by default)."""
    lake = Lake.from_config(cfg)
    names = list(variants) if variants else list(cfg.ranker.variants)
    results: dict[str, Any] = {"ranker": {}}
    preds = {v: _read_predictions(lake, v, cfg.ranker.seeds) for v in names}
    missing = [v for v in names if not preds[v]]
    if variants and missing:
        raise FileNotFoundError(f"no predictions_test.parquet for {missing} under "
                                f"{lake.root / 'models' / 'ranker'}: run `saviorrec train` first")
    for v in names:
        if preds[v]:
            results["ranker"][v] = evaluate_variant(cfg, preds[v])
            metas = _metas(lake, v, sorted(preds[v]))
            for key, value in (("valid_auc", valid_auc(metas)),
                               ("mba_level_importance", level_importance(metas))):
                if value is not None:
                    results["ranker"][v][key] = value
            for key, value in results["ranker"][v].items():
                update_metrics(lake.metrics, f"ranker.{v}.{key}", value)

    stats = load_stats(lake.training_stats)  # one table for both splits, read once
    train, test = (load_samples(lake.training(split), stats) for split in (TRAIN, TEST))
    ref = smoothed_mean_scores(train.user_id, train.item_id, train.label.astype("float64"),
                               test.user_id, test.item_id, cfg.stats.ctr_prior_strength)
    n = cfg.ranker.bootstrap_samples
    seen = seen_buckets(cfg, test)
    reference = {
        "auc": auc(test.label, ref),
        "ci95": list(bootstrap_auc(test.label, ref, n_resamples=n)),
        "auc_by_bucket": auc_by_bucket(test.label, ref, test.eval_pv_bucket,
                                       cfg.stats.bucket_labels()),
        "auc_by_seen_bucket": auc_by_bucket(test.label, ref, seen, cfg.stats.bucket_labels()),
    }
    results["reference"] = {"smoothed_mean": reference}
    update_metrics(lake.metrics, "reference.smoothed_mean", reference)
    truth = oracle_scores(lake)
    if truth is not None:
        oracle = {
            "auc": auc(test.label, truth),
            "ci95": list(bootstrap_auc(test.label, truth, n_resamples=n)),
            "auc_by_bucket": auc_by_bucket(test.label, truth, test.eval_pv_bucket,
                                           cfg.stats.bucket_labels()),
            "auc_by_seen_bucket": auc_by_bucket(test.label, truth, seen,
                                                cfg.stats.bucket_labels()),
        }
        results["reference"]["oracle"] = oracle
        update_metrics(lake.metrics, "reference.oracle", oracle)

    # The PV bucket of each test candidate AT ITS SAMPLE TIME (its views before t: the statistic
    # the ranker saw), beside the protocol's bucket of train PV: an item without train views may
    # have been viewed in valid or test before t, and only an item unseen at t is truly cold.
    for v in names:
        for seed, p in preds[v].items():
            if not np.array_equal(p["item_id"], test.item_id):
                raise ValueError(f"{v} seed {seed}: predictions_test.parquet is not in the order "
                                 "of the test split (re-run `saviorrec train`)")
        if preds[v]:
            per_seed = [auc_by_bucket(test.label, p["score"], seen, cfg.stats.bucket_labels())
                        for p in preds[v].values()]
            # a bucket without both classes has no AUC (NaN): left out
            by_seen = {b: float(np.mean([a[b] for a in per_seed])) for b in per_seed[0]
                       if not np.isnan(per_seed[0][b])}
            results["ranker"][v]["auc_by_seen_bucket"] = by_seen
            update_metrics(lake.metrics, f"ranker.{v}.auc_by_seen_bucket", by_seen)

    if preds.get("full"):
        buckets = cfg.stats.bucket_labels()
        against = {}
        for v in names:
            if v == "full" or not preds[v]:
                continue
            gap = paired_gap(preds["full"], preds[v], n)
            if gap is None:
                continue
            if v == "base":  # the cold-start pattern: the gain per PV bucket
                gap["by_bucket"] = {b: paired_gap(preds["full"], preds[v], n,
                                                  rows=test.eval_pv_bucket == i)
                                    for i, b in enumerate(buckets)}
                gap["by_seen_bucket"] = {b: paired_gap(preds["full"], preds[v], n,
                                                       rows=seen == i)
                                         for i, b in enumerate(buckets)}
            against[v] = gap
        if against:
            results["ranker"]["full_minus"] = against
            update_metrics(lake.metrics, "ranker.full_minus", against)
    drop_metrics(lake.metrics, "ranker.full_minus_base")  # written by evaluations before
    return results


def seen_buckets(cfg: Config, samples: Samples) -> np.ndarray:
    """Index of each candidate's point-in-time PV (item_stats pv at the sample time) in the
    configured PV buckets (lower edges), as spark_jobs.columns.pv_bucket computes it."""
    pv = samples.stats[:, ITEM_STAT_NUMERIC.index("pv")]
    return np.searchsorted(np.asarray(cfg.stats.pv_buckets), pv, side="right") - 1


def paired_gap(a: dict[int, dict[str, np.ndarray]], b: dict[int, dict[str, np.ndarray]], n: int,
               rows: np.ndarray | None = None) -> dict[str, Any] | None:
    """AUC(a) - AUC(b) on the same test rows (those of the ``rows`` mask, or all), per seed both
    have: the mean difference and the mean of the per-seed 95% paired bootstrap intervals."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    rows = slice(None) if rows is None else rows
    diffs = []
    for s in common:
        if len(np.unique(a[s]["label"][rows])) < 2:
            return None  # no AUC without both classes (e.g. an empty bucket)
        diffs.append(paired_bootstrap_diff(a[s]["label"][rows], a[s]["score"][rows],
                                           b[s]["score"][rows], n_resamples=n, seed=s))
    d = np.array(diffs)
    return {"diff": float(d[:, 0].mean()), "ci95": [float(d[:, 1].mean()), float(d[:, 2].mean())],
            "seeds": {str(s): float(x) for s, x in zip(common, d[:, 0], strict=True)}}
