"""benchmarks/rq_code_information.py: the MBA's code features by hand, the held-out R^2 against
known answers, and a real run over the tiny training world's items and RQ codebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import load_benchmark
from test_ranker_fixtures import training_world


def test_code_features_by_hand() -> None:
    bench = load_benchmark("rq_code_information")
    codebook = np.array([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 4.0]]])  # [L=2, K=2, 2]
    codes = np.array([[1, 0], [0, 1]])
    # item 0: [0, 2, 3, 0], |v|^2 = 13; item 1: [1, 0, 0, 4], |v|^2 = 17; eps 3 -> 16, 20
    out = bench.code_features(codebook, codes, 2, 3.0)
    np.testing.assert_allclose(out, [[0, 0.5, 0.75, 0], [1 / math.sqrt(20), 0, 0, 4 / math.sqrt(20)]],
                               rtol=1e-6)
    np.testing.assert_allclose(bench.code_features(codebook, codes, 1, 1e-12), [[0, 1], [1, 0]],
                               atol=1e-6)


def test_held_out_r2_known_answers() -> None:
    bench = load_benchmark("rq_code_information")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6))
    z = x @ rng.standard_normal((6, 3)) + 2.0  # exactly linear, with a bias
    assert bench.held_out_r2(x, z) == pytest.approx(1.0, abs=1e-9)
    noise = rng.standard_normal((500, 3))  # unrelated to x: nothing to recover
    assert -0.1 < bench.held_out_r2(x, noise) < 0.05
    half = z + rng.standard_normal(z.shape) * z.std(axis=0)  # noise as large as the signal
    assert bench.held_out_r2(x, half) == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="matching rows"):
        bench.held_out_r2(x[:5], z[:5])


def test_measures_a_run(tmp_path: Path) -> None:
    bench = load_benchmark("rq_code_information")
    cfg = training_world(tmp_path / "run")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "result.json"
    assert bench.main(["--config", str(config), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["items"] == 30 and result["codebook_shape"] == [2, 4, 8]
    assert 1 <= result["distinct_code_tuples"] <= 16  # K^L = 4^2 tuples at most
    r2 = result["held_out_r2_by_levels"]
    assert list(r2) == ["1", "2"] and all(math.isfinite(v) for v in r2.values())
