"""Evaluation metrics shared by every stage: AUC with bootstrap intervals, per-bucket AUC,
i2i Hit@K, and the metrics.json file of a run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from saviorrec.lake import atomic_path


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (undefined, never silently 0.5)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


class _WeightedAUC:
    """AUC of one score vector under row weights, in O(n) per call: the rows are sorted once,
    so a bootstrap resample (row multiplicities) needs no new sort. Ties count half, as in
    ``roc_auc_score``."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")
        sorted_scores = np.asarray(scores)[self.order]
        self.positive = np.asarray(labels)[self.order] == 1
        # start of each run of equal scores (tie group)
        self.starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        pos = np.add.reduceat(np.where(self.positive, w, 0.0), self.starts)
        neg = np.add.reduceat(np.where(self.positive, 0.0, w), self.starts)
        below = np.cumsum(neg) - neg  # negative weight strictly below each tie group
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def _resamples(labels: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row multiplicities of ``n_resamples`` bootstrap resamples (drawn with replacement); a
    resample that holds one class only (AUC undefined) is skipped."""
    rng = np.random.default_rng(seed)
    n = labels.size
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        y = labels[idx]
        if y.min() != y.max():
            yield np.bincount(idx, minlength=n).astype(np.float64)


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray, *, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the AUC (resampling samples with replacement)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.size == 0 or labels.min() == labels.max():
        return (float("nan"), float("nan"))
    weighted = _WeightedAUC(labels, scores)
    values = [weighted(w) for w in _resamples(labels, n_resamples, seed)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def paired_bootstrap_diff(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same test rows, with its 95% paired bootstrap interval."""
    labels = np.asarray(labels)
    a, b = _WeightedAUC(labels, scores_a), _WeightedAUC(labels, scores_b)
    diffs = [a(w) - b(w) for w in _resamples(labels, n_resamples, seed)]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return (auc(labels, scores_a) - auc(labels, scores_b), float(lo), float(hi))


def auc_by_bucket(
    labels: np.ndarray, scores: np.ndarray, buckets: np.ndarray, bucket_labels: list[str]
) -> dict[str, float]:
    out = {}
    for i, name in enumerate(bucket_labels):
        mask = buckets == i
        out[name] = auc(labels[mask], scores[mask])
    return out


def hit_at_k(retrieved: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows whose target id is among that row's retrieved ids ([n, k] vs [n])."""
    retrieved = np.asarray(retrieved)
    targets = np.asarray(targets)
    if retrieved.shape[0] != targets.shape[0]:
        raise ValueError(f"{retrieved.shape[0]} query rows but {targets.shape[0]} targets")
    if targets.size == 0:
        return float("nan")
    return float((retrieved == targets[:, None]).any(axis=1).mean())


# --- metrics.json -------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def update_metrics(path: Path, dotted_key: str, value: Any) -> None:
    """Set ``a.b.c`` in metrics.json (creating it), written atomically. NaN is stored as null."""
    path = Path(path)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    node = data
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = _clean(value)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def drop_metrics(path: Path, dotted_key: str) -> None:
    """Remove ``a.b.c`` from metrics.json if it is there (a key an older version wrote)."""
    path = Path(path)
    if not path.exists():
        return
    data = json.loads(path.read_text())
    *parents, last = dotted_key.split(".")
    node = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        return
    del node[last]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def read_metrics(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}
