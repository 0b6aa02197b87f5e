"""A Spark standalone cluster on this machine: one master and N workers on loopback.

The processes are the pyspark package's own launchers (``bin/spark-class``), so nothing beyond
the Python environment is installed. Jobs reach the cluster by its URL (``spark.master`` of the
config, or ``spark-submit --master``). Used by tests/test_spark_cluster.py and
benchmarks/pipeline_scale.py; the processes are always stopped on leaving the ``with`` block.

    with StandaloneCluster(workdir, workers=2) as cluster:
        ... cfg.with_overrides(spark={"master": cluster.url}) ...

``env`` is the environment a driver or ``spark-submit`` should run in: executors run this
interpreter (PYSPARK_PYTHON) with ``python_path`` importable, all on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_env(workdir: Path, python_path: str | None = None) -> dict[str, str]:
    """This process's environment for the master, the workers and their drivers."""
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_WORKER_DIR": str(workdir / "work"), "SPARK_LOG_DIR": str(workdir / "logs"),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (python_path, env.get("PYTHONPATH")) if p)
    return env


class StandaloneCluster:
    """Master + ``workers`` workers of ``cores`` cores and ``memory`` each (Spark's own syntax,
    e.g. "1g"): one executor of an application per worker when spark.executor.cores = cores."""

    def __init__(self, workdir: Path, *, workers: int = 1, cores: int = 1, memory: str = "1g",
                 python_path: str | None = None, timeout_s: float = 120.0) -> None:
        if workers < 1:
            raise ValueError(f"workers = {workers}: a cluster needs at least one")
        self.workdir, self.workers, self.cores, self.memory = workdir, workers, cores, memory
        self.timeout_s = timeout_s
        self.env = cluster_env(workdir, python_path)
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.master: subprocess.Popen[bytes] | None = None
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def _launch(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        return subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)

    def alive_workers(self) -> int:
        """Workers the master counts as alive (its web UI's JSON)."""
        url = f"http://127.0.0.1:{self.ui_port}/json/"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(json.load(response).get("aliveworkers", 0))

    def _wait_for(self, workers: int, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                if self.alive_workers() >= workers:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{what} not up within {self.timeout_s:.0f} s "
                           f"(logs in {self.workdir})")

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.master = self._launch("master", [MASTER_CLASS, "--host", "127.0.0.1", "--port",
                                                  str(self.port), "--webui-port", str(self.ui_port)])
            self._wait_for(0, "Spark master")
            for i in range(self.workers):
                self.worker_procs.append(self._launch(f"worker{i}", [
                    WORKER_CLASS, "--host", "127.0.0.1", "--cores", str(self.cores), "--memory",
                    self.memory, "--webui-port", str(free_port()), self.url]))
            self._wait_for(self.workers, f"{self.workers} Spark worker(s)")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the workers, then the master (killed after 30 s); idempotent."""
        procs = [*self.worker_procs, *([self.master] if self.master else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.worker_procs, self.master = [], None
        for log in self._logs:
            log.close()
        self._logs = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
