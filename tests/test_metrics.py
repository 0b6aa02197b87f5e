"""saviorrec.metrics against hand-computed values and independent counts."""

from __future__ import annotations

import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from saviorrec.metrics import (
    auc,
    auc_by_bucket,
    bootstrap_auc,
    drop_metrics,
    hit_at_k,
    paired_bootstrap_diff,
    read_metrics,
    update_metrics,
)


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the fraction of (positive, negative) pairs ranked right, ties count half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_pairwise_count_and_is_nan_for_one_class() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    scores = np.array([0.1, 0.8, 0.3, 0.3, 0.9, 0.2, 0.7])
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    assert auc(labels, scores) == pytest.approx(10.5 / 12)
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))
    assert math.isnan(auc(np.array([]), np.array([])))


def test_weighted_auc_equals_sklearn_on_the_resampled_rows() -> None:
    from sklearn.metrics import roc_auc_score

    from saviorrec.metrics import _resamples, _WeightedAUC

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # rounded: many ties
    weighted = _WeightedAUC(labels, scores)
    rng_idx = np.random.default_rng(7)
    for _ in range(20):
        idx = rng_idx.integers(0, 500, 500)
        weights = np.bincount(idx, minlength=500).astype(float)
        assert weighted(weights) == pytest.approx(roc_auc_score(labels[idx], scores[idx]), abs=1e-12)
    assert weighted(np.ones(500)) == pytest.approx(auc(labels, scores), abs=1e-12)
    assert all(w.sum() == 40 for w in _resamples(labels[:40], 5, seed=0))


def test_bootstrap_interval_brackets_the_auc_and_narrows_with_more_rows() -> None:
    rng = np.random.default_rng(0)

    def world(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return y, y * 0.5 + rng.normal(size=n)

    y_small, s_small = world(300)
    y_big, s_big = world(3000)
    lo, hi = bootstrap_auc(y_small, s_small, n_resamples=200)
    assert lo < auc(y_small, s_small) < hi
    lo_big, hi_big = bootstrap_auc(y_big, s_big, n_resamples=200)
    assert (hi_big - lo_big) < (hi - lo) / 2  # ~1/sqrt(10) as wide
    assert bootstrap_auc(y_small, s_small, n_resamples=50, seed=3) == \
        bootstrap_auc(y_small, s_small, n_resamples=50, seed=3)


def test_paired_difference_sign_and_interval() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    good, noise = y + rng.normal(size=2000), rng.normal(size=2000)
    diff, lo, hi = paired_bootstrap_diff(y, good, noise, n_resamples=200)
    assert diff == pytest.approx(auc(y, good) - auc(y, noise))
    assert 0 < lo < diff < hi
    same, lo0, hi0 = paired_bootstrap_diff(y, good, good, n_resamples=50)
    assert same == lo0 == hi0 == 0.0


def test_auc_by_bucket_and_hit_at_k() -> None:
    labels = np.array([0, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.5, 0.6])
    buckets = np.array([0, 0, 1, 1, 2, 2])
    out = auc_by_bucket(labels, scores, buckets, ["a", "b", "c"])
    assert out["a"] == 1.0 and out["b"] == 0.0 and math.isnan(out["c"])
    retrieved = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert hit_at_k(retrieved, np.array([3, 1, 7])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 targets"):
        hit_at_k(retrieved, np.array([1, 2]))


def test_drop_metrics_removes_one_key_and_leaves_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    drop_metrics(path, "ranker.full_minus_base")  # no file: nothing to do, nothing written
    assert not path.exists()
    update_metrics(path, "ranker.full_minus_base", {"diff": 0.1})
    update_metrics(path, "ranker.full_minus.base", {"diff": 0.1})
    drop_metrics(path, "ranker.full_minus_base")
    drop_metrics(path, "ranker.absent.key")
    assert read_metrics(path) == {"ranker": {"full_minus": {"base": {"diff": 0.1}}}}


def test_update_metrics_nests_keys_and_stores_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    update_metrics(path, "ranker.full.auc.mean", np.float32(0.75))
    update_metrics(path, "ranker.full.auc.seeds", [np.float64(0.7), float("nan")])
    update_metrics(path, "timings.train_s", np.int64(3))
    assert json.loads(path.read_text()) == read_metrics(path) == {
        "ranker": {"full": {"auc": {"mean": 0.75, "seeds": [0.7, None]}}},
        "timings": {"train_s": 3}}
