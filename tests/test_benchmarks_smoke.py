"""CPU smoke tests of the benchmarks: tiny runs in a subprocess (ranker_throughput.py,
feature_serving.py), so that a change of the data contract cannot leave a benchmark broken."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saviorrec.config import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "ranker_throughput.py"
MEASURES = {"pipeline", "train_fit", "train_step", "predict_step"}


@pytest.mark.timeout(300)
def test_ranker_throughput_tiny(tmp_path: Path) -> None:
    out = tmp_path / "ranker_throughput.json"
    # fuxictr is not a project dependency: DIN runs only where it is importable (the GPU host
    # gets it from the carried wheels).
    with_din = importlib.util.find_spec("fuxictr") is not None
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--backend", "jax", "--batch-sizes", "16",
           "--steps", "3", "--warmup", "1", "--device-batches", "2", "--out", str(out)]
    if not with_din:
        cmd.append("--skip-din")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    for key in ("command", "date_utc", "device", "versions", "sizes", "ranker_config",
                "settings", "results", "summary"):
        assert key in result, key
    assert result["backend"] == result["keras_backend"] == "jax"
    assert result["device"]["device_name"]
    assert result["versions"]["keras"] == "3.15.1"
    assert result["sizes"]["seq_len"] == 8

    tabled = [r for r in result["results"] if "device_item_tables" in (r.get("tag") or "")]
    assert len(tabled) == 1 and "error" not in tabled[0] and tabled[0]["samples_per_s"] > 0
    ranker = {r["measure"]: r for r in result["results"]
              if r["model"] in ("SaviorRanker", "host_pipeline") and r not in tabled}
    assert set(ranker) == MEASURES
    for record in ranker.values():
        assert "error" not in record, record
        assert record["batch_size"] == 16 and record["steps"] == 3
        # samples/s recomputed from the raw seconds, not read back from the same field.
        assert record["samples_per_s"] == pytest.approx(16 * 3 / record["seconds"], rel=1e-3)
        assert record["samples_per_s"] > 0
    assert ranker["train_fit"]["first_call_s"] > 0
    assert "compile_s_est" in ranker["train_fit"]

    (summary,) = result["summary"]
    assert summary["batch_size"] == 16
    assert summary["ranker_train_fit_samples_per_s"] > 0
    assert summary["ranker_train_step_samples_per_s"] > 0
    assert summary["bottleneck"]
    assert summary["target_600000_train_fit_met"] is False  # a tiny CPU run is far below it
    if with_din:
        din = {r["measure"]: r for r in result["results"] if r["model"] == "FuxiCTR-DIN"}
        assert {"train_fit", "train_step", "predict_step"} <= set(din)
        assert summary["ratio_vs_din_train_step"] > 0
    assert "SaviorRanker" in proc.stdout and "samples_per_s" in proc.stdout  # the table


@pytest.mark.timeout(300)
def test_ranker_throughput_data_parallel_tiny(tmp_path: Path) -> None:
    """--data-parallel on two host CPU devices: samples/s and scaling efficiency per count."""
    out = tmp_path / "ranker_dp.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--backend", "jax", "--data-parallel",
           "--batch-sizes", "8", "--steps", "3", "--warmup", "1", "--device-batches", "2",
           "--out", str(out)]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    def key(r: dict) -> str:  # the fit with on-device item tables is a third measure
        return "train_fit_device_tables" if "device_item_tables" in (r.get("tag") or "") \
            else r["measure"]

    measures = ("train_fit", "train_fit_device_tables", "train_step")
    records = {(r["devices"], key(r)): r for r in result["results"]}
    assert set(records) == {(k, m) for k in (1, 2) for m in measures}
    for (k, _), record in records.items():
        assert "error" not in record, record
        assert record["per_device_batch"] == 8 and record["batch_size"] == 8 * k
        # fit rounds the steps to whole executions (steps_per_execution of the config)
        assert record["steps"] == (3 if key(record) != "train_fit_device_tables"
                                   else record["steps_per_execution"])
        assert record["samples_per_s"] == pytest.approx(
            8 * k * record["steps"] / record["seconds"], rel=1e-3)
    # The 2-device step really ran on both devices: batch split, variables replicated.
    assert records[(2, "train_step")]["batch_devices"] == 2
    assert records[(2, "train_step")]["variable_devices"] == 2
    assert records[(1, "train_step")]["batch_devices"] == 1
    section = result["data_parallel"]
    assert section["devices_visible"] == 2 and section["device_counts"] == [1, 2]
    (row,) = section["results"]
    for measure in measures:
        sps = row[f"{measure}_samples_per_s"]
        assert sps == {str(k): records[(k, measure)]["samples_per_s"] for k in (1, 2)}
        assert row[f"{measure}_scaling_efficiency"]["2"] == pytest.approx(
            sps["2"] / (2 * sps["1"]), abs=1e-4)
    assert not any(r["model"] == "FuxiCTR-DIN" for r in result["results"])


@pytest.mark.timeout(420)
def test_feature_serving_tiny(tmp_path: Path) -> None:
    out = tmp_path / "feature_serving.json"
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "feature_serving.py"), "--samples",
           "2000", "--seq-samples", "500", "--items", "100", "--users", "20", "--reads", "5",
           "--skip-spark", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["training_set_local"]["samples"] > 0
    assert result["online"]["materialize_seconds_spark_to_redis"] > 0
