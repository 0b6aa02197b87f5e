"""A real standalone Spark cluster (master + one worker on loopback) gives the local output.

The master and worker are the pyspark package's own launchers (spark_jobs/standalone.py); the
jobs go through ``spark-submit spark_jobs/runner.py --config FILE`` with ``--master spark://...``.
Both processes are always stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from spark_jobs.runner import run_jobs
from spark_jobs.standalone import SPARK_HOME, StandaloneCluster, cluster_env

TABLES = ("samples", "item_pv", "coclick", "coclick_stats", "item_stats", "sequences")


@pytest.fixture()
def standalone(tmp_path: Path) -> Iterator[str]:
    with StandaloneCluster(tmp_path, workers=1, cores=1, memory="1g") as cluster:
        yield cluster.url


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
        cwd=REPO_ROOT, env=cluster_env(tmp_path), capture_output=True, text=True, timeout=600, check=False,
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
