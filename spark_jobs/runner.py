"""Run Spark jobs in pipeline order on one session: ``run_jobs(cfg, ["samples", ...])``.

The jobs and their order come from the stage registry (saviorrec.stages.SPARK_JOBS): samples
runs first (the other jobs read its output), then coclick, item_stats, sequences. Each job is a
module of this package with ``run(spark, cfg) -> dict``; the result of ``run_jobs`` holds, per
job, its seconds, output row counts and bad-row counts.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: import from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql import SparkSession

from saviorrec.config import Config, load_config
from saviorrec.stages import SPARK_JOB_NAMES
from spark_jobs import coclick, item_stats, samples, sequences
from spark_jobs.session import session_scope

log = logging.getLogger(__name__)

JOBS: tuple[str, ...] = SPARK_JOB_NAMES
# Each registry job's run function, by job name (= module name; tests check the registry's
# entry points name these functions).
JOB_RUNS: dict[str, Callable[[SparkSession, Config], dict[str, Any]]] = {
    module.__name__.rpartition(".")[2]: module.run
    for module in (samples, coclick, item_stats, sequences)
}


def run_jobs(cfg: Config, jobs: list[str], master: str | None = None) -> dict[str, Any]:
    """Run ``jobs`` (in pipeline order, whatever order they are given in) and report on each.

    A SparkSession already active in this process is reused (and left running) when its master
    matches; otherwise one is built from ``cfg.spark`` and stopped at the end.
    """
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        raise ValueError(f"unknown Spark job(s) {unknown}; choose from {list(JOBS)}")
    started = time.perf_counter()
    with session_scope(cfg.spark, master) as spark:
        result: dict[str, Any] = {
            "master": spark.sparkContext.master,
            "spark_version": spark.version,
            "startup_seconds": round(time.perf_counter() - started, 3),
            "jobs": {},
        }
        for job in (j for j in JOBS if j in jobs):
            t0 = time.perf_counter()
            log.info("spark job %s on %s", job, result["master"])
            out = JOB_RUNS[job](spark, cfg)
            out = {"seconds": round(time.perf_counter() - t0, 3), **out}
            out.setdefault("bad_rows", {})
            result["jobs"][job] = out
    result["total_seconds"] = round(time.perf_counter() - started, 3)
    return result


def job_main(job: str, argv: list[str] | None = None) -> int:
    """Entry point of ``spark-submit spark_jobs/<job>.py --config FILE [--master URL]``.

    ``job`` may be ``all``. Prints the result as JSON on stdout.
    """
    parser = argparse.ArgumentParser(prog=f"spark_jobs/{job}.py", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config of the run")
    parser.add_argument("--master", default=None, help="Spark master URL (default: config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    jobs = list(JOBS) if job == "all" else [job]
    print(json.dumps(run_jobs(cfg, jobs, master=args.master), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(job_main("all"))
