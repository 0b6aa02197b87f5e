"""One Spark job as its own script under spark-submit (``spark-submit spark_jobs/samples.py
--config FILE``), the way a cluster runs it: the job's output and its JSON report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pyspark
import yaml
from test_spark_jobs import write_lake

from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from saviorrec.schema import SAMPLES, SPLITS

SPARK_HOME = Path(pyspark.__file__).parent


def test_spark_submit_runs_one_job_script(config: Config, tmp_path: Path) -> None:
    cfg = config.with_overrides(spark={"driver_memory": "1g", "shuffle_partitions": 2})
    write_lake(cfg, bad=False)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    submitted = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", "local[1]",
         str(REPO_ROOT / "spark_jobs" / "samples.py"), "--config", str(config_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    # spark-submit merges the driver's log lines into stdout: decode the JSON object alone
    start = re.search(r"^\{", submitted.stdout, re.MULTILINE)
    assert start is not None, submitted.stdout[-2000:]
    result, _ = json.JSONDecoder().raw_decode(submitted.stdout, start.start())
    assert result["master"] == "local[1]" and list(result["jobs"]) == ["samples"]
    samples = pq.read_table(Lake.from_config(cfg).spark("samples"))
    SAMPLES.validate_arrow(samples)
    # 3 users x 5 events (tests/test_spark_jobs.py), every one labelled and in a split
    assert result["jobs"]["samples"]["rows"]["samples"] == samples.num_rows == 15
    assert set(samples["split"].to_pylist()) <= set(SPLITS)
    assert sorted(samples["label"].to_pylist()) == [0] * 6 + [1] * 9
    assert not Lake.from_config(cfg).spark("coclick").exists()  # that job was not asked for
