"""A real standalone Spark cluster (master + one worker on loopback) gives the local output.

The master and worker are the pyspark package's own launchers (``bin/spark-class``); the jobs
go through ``spark-submit spark_jobs/runner.py --config FILE`` with ``--master spark://...``.
Both processes are always stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from spark_jobs.runner import run_jobs

SPARK_HOME = Path(pyspark.__file__).parent
TABLES = ("samples", "item_pv", "coclick", "coclick_stats", "item_stats", "sequences")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_WORKER_DIR": str(workdir / "work"), "SPARK_LOG_DIR": str(workdir / "logs"),
            "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def _wait(predicate: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not up within {timeout:.0f}s")


def _alive_workers(ui_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        return int(json.load(response).get("aliveworkers", 0))


@pytest.fixture()
def standalone(tmp_path: Path) -> Iterator[str]:
    env = _env(tmp_path)
    port, ui_port = free_port(), free_port()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("master", "worker")}  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(ui_port)],
            env=env, stdout=logs["master"], stderr=subprocess.STDOUT))
        url = f"spark://127.0.0.1:{port}"
        _wait(lambda: _alive_workers(ui_port) >= 0, "Spark master")
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
             "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()), url],
            env=env, stdout=logs["worker"], stderr=subprocess.STDOUT))
        _wait(lambda: _alive_workers(ui_port) == 1, "Spark worker")
        yield url
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()


@pytest.mark.spark_cluster
def test_standalone_cluster_matches_local(
    config: Config, spark: SparkSession, movielens_dir: Path, standalone: str, tmp_path: Path
) -> None:
    from saviorrec.datasets.prepare import prepare

    base = config.with_overrides(
        data={"source_dir": str(movielens_dir), "user_fraction": 0.05},
        spark={"driver_memory": "1g", "executor_memory": "512m", "shuffle_partitions": 2},
    )
    local = base.with_overrides(run={"root": str(tmp_path / "local")})
    cluster = base.with_overrides(run={"root": str(tmp_path / "cluster")})
    prepare(local)
    shutil.copytree(Lake.from_config(local).events.parent, Lake.from_config(cluster).events.parent)
    local_result = run_jobs(local, ["samples", "coclick", "item_stats", "sequences"])

    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(cluster.model_dump(mode="json")))
    submitted = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", standalone,
         "--conf", "spark.executor.memory=512m", "--driver-memory", "1g",
         str(REPO_ROOT / "spark_jobs" / "runner.py"), "--config", str(config_file)],
        cwd=REPO_ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600, check=False,
    )
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    # spark-submit merges the driver's log lines into stdout: decode the JSON object alone
    result, _ = json.JSONDecoder().raw_decode(submitted.stdout, submitted.stdout.index("\n{") + 1)
    assert result["master"] == standalone
    for job, report in local_result["jobs"].items():
        assert result["jobs"][job]["rows"] == report["rows"], job
    local_lake, cluster_lake = Lake.from_config(local), Lake.from_config(cluster)
    for table in TABLES:
        assertDataFrameEqual(
            spark.read.parquet(str(cluster_lake.spark(table))),
            spark.read.parquet(str(local_lake.spark(table))),
        )
    assert local_result["jobs"]["samples"]["rows"]["samples"] > 1000
