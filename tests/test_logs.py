"""Quiet, honest logs and defaults (issue 27 item 6): what the command line logs at INFO or
WARNING is the project's own, or something a user should act on; the encoder's ablations belong
to the paper's full grid, not to every run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_datasets_bad_input import GOOD_RATINGS, write_folder

from saviorrec.config import DATA_ENV, Config, load_config
from saviorrec.lake import Lake
from saviorrec.logs import configure_logging
from saviorrec.pipeline import run_pipeline

# TensorFlow's warning as `saviorrec run` logged it (a synthetic run's log, 2026-12-04)
KERAS_RETRACING = (
    "5 out of the last 6 calls to <function TensorFlowTrainer.make_predict_function.<locals>."
    "multi_step_on_data at 0x7fb9a41b6700> triggered tf.function retracing. Tracing is expensive "
    "and the excessive number of tracings could be due to (1) creating @tf.function repeatedly "
    "in a loop, (2) passing tensors with different shapes, (3) passing Python objects instead of "
    "tensors.")


def _import_faiss(configure: bool) -> str:
    setup = ("from saviorrec.logs import configure_logging; configure_logging()" if configure
             else "import logging; logging.basicConfig(level=logging.INFO)")
    out = subprocess.run([sys.executable, "-c", f"{setup}\nimport faiss"], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout + out.stderr


def test_faiss_loader_lines_are_not_logged() -> None:
    assert "ModuleNotFoundError" in _import_faiss(configure=False)  # what a plain INFO log shows
    assert _import_faiss(configure=True).strip() == ""


def test_only_the_keras_predict_retracing_warning_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    configure_logging()
    configure_logging()  # twice: one filter
    tensorflow = logging.getLogger("tensorflow")
    assert len(tensorflow.filters) == 1
    with caplog.at_level(logging.WARNING):
        tensorflow.warning(KERAS_RETRACING)
        other = KERAS_RETRACING.replace("TensorFlowTrainer.make_predict_function.<locals>.", "")
        tensorflow.warning(other)  # a retracing of the user's own function still shows
        tensorflow.warning("some other TensorFlow warning")
    assert [r.getMessage() for r in caplog.records] == [other, "some other TensorFlow warning"]


def _config(tmp_path: Path) -> Config:
    source = write_folder(tmp_path / "source", GOOD_RATINGS)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "logs", "root": str(tmp_path / "run")},
                                    "data": {"source_dir": str(source)}}))
    return load_config(path)


@pytest.mark.parametrize("full_grid", [False, True])
def test_encoder_ablations_belong_to_the_full_grid(tmp_path: Path, full_grid: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert Config().encoder.ablations is False
    cfg = _config(tmp_path)
    run_pipeline(cfg, full_grid=full_grid, only=["prepare"])
    assert load_config(Lake.from_config(cfg).run_config).encoder.ablations is full_grid


def test_a_local_spark_session_starts_quietly() -> None:
    """Spark's start-up said three things a user cannot act on (Hadoop's optional native
    library, the host name resolving to loopback twice); the JVM's own line about the incubator
    module Spark 4 asks for is printed before any logging and stays."""
    code = ("from saviorrec.config import SparkConfig\n"
            "from spark_jobs.session import build_session\n"
            "spark = build_session(SparkConfig(master='local[1]'))\n"
            "assert spark.range(3).count() == 3\n"
            "spark.stop()\n")
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True, env=env)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert lines in ([], ["WARNING: Using incubator modules: jdk.incubator.vector"]), lines
