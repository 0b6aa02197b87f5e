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
