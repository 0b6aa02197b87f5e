"""benchmarks/synthetic_coldstart.py's paired validation comparison: the arithmetic by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

sc = load_benchmark("synthetic_coldstart")


def _meta(root: Path, variant: str, seed: int, val: float, by_bucket: dict | None) -> None:
    folder = root / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    meta = {"val_auc": val, **({"val_auc_by_bucket": by_bucket} if by_bucket else {})}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_compare_validation_pairs_by_variant_and_seed_and_bucket(tmp_path: Path) -> None:
    inc, cha = tmp_path / "inc", tmp_path / "cha"
    _meta(inc, "full", 0, 0.70, {"0": 0.60, "1-5": 0.65})
    _meta(cha, "full", 0, 0.71, {"0": 0.64, "1-5": 0.66})
    _meta(inc, "full", 1, 0.72, {"0": 0.62, "1-5": None})
    _meta(cha, "full", 1, 0.72, {"0": 0.68, "1-5": 0.70})
    _meta(cha, "full", 2, 0.90, None)  # no incumbent: not paired
    out = sc.compare_validation(inc, cha)
    assert sorted(out["pairs"]) == ["full/seed0", "full/seed1"]
    assert out["all"]["runs"] == 2 and out["all"]["mean_gain"] == pytest.approx(0.005)
    zero = out["full"]["by_bucket"]["0"]  # gains 0.04 and 0.06
    assert zero["runs"] == 2 and zero["mean_gain"] == pytest.approx(0.05)
    assert zero["se"] == pytest.approx(0.01) and zero["t"] == pytest.approx(5.0)
    assert "1-5" not in out["full"]["by_bucket"]  # NaN in one pair: not in every pair


def test_topic_hit_ceiling_by_hand_and_by_retrieval() -> None:
    """By hand on a tiny catalogue, then against the real retrieval (faiss, the encoder's Hit@K)
    of one-hot topic embeddings whose ties are broken by random jitter, averaged over draws."""
    import numpy as np

    from encoder_torch.hit_rate import i2i_hit_rate

    ids = np.arange(1, 8)
    topics = np.array([0, 0, 0, 0, 1, 1, 2])  # topic 0: 4 items, 1: 2 items, 2: 1 item
    queries = np.array([1, 1, 5, 7, 2])
    targets = np.array([2, 5, 6, 1, 2])  # same topic; other topic; same (all found); other; itself
    got = sc.topic_hit_ceiling(ids, topics, queries, targets, k=2)
    # pair 1: 2 of 3 others -> 2/3; pair 3: 1 other, k=2 -> 1; the rest 0
    assert got == {"expected_hit": pytest.approx((2 / 3 + 1) / 5), "same_topic_share": 0.4,
                   "pairs": 5}
    rng = np.random.default_rng(0)
    ids = np.arange(1, 301)
    topics = rng.integers(0, 6, 300)
    queries, targets = rng.choice(ids, 400), rng.choice(ids, 400)
    targets[:200] = [rng.choice(ids[topics == topics[q - 1]]) for q in queries[:200]]
    draws = [i2i_hit_rate(embeddings=np.eye(6)[topics] + rng.normal(0, 1e-3, (300, 6)),
                          item_ids=ids, queries=queries, targets=targets, k=10)
             for _ in range(200)]
    expected = sc.topic_hit_ceiling(ids, topics, queries, targets, k=10)["expected_hit"]
    assert abs(np.mean(draws) - expected) < 0.005
