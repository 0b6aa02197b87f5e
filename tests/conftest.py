"""Shared fixtures: the real MovieLens folder, a local SparkSession, a real redis-server."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from saviorrec.config import REPO_ROOT, Config, load_config

MOVIELENS_DIR = (REPO_ROOT / ".." / "shared" / "data" / "ml-latest-small").resolve()


def load_benchmark(name: str, folder: str = "benchmarks") -> ModuleType:
    """<folder>/<name>.py (benchmarks/ or tools/) as module ``bench_<name>`` (neither folder is a
    package). Its scripts put their folder on sys.path; restored after, or
    benchmarks/spark_jobs.py would shadow the spark_jobs package for later tests."""
    saved = list(sys.path)
    sys.path.insert(0, str(REPO_ROOT / folder))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                      REPO_ROOT / folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def world_cli(tmp: Path, world: dict, name: str,
              timeout_s: float = 1800) -> tuple[Path, Callable[..., subprocess.CompletedProcess]]:
    """A run config under ``tmp`` (``world``, a config overlay, named ``name``) and
    ``cli(*args)``: ``saviorrec <args> --config <it>`` in a subprocess, as a user runs it,
    asserting success with the output's tail."""
    import yaml

    config = tmp / "world.yaml"
    config.write_text(yaml.safe_dump({**world, "run": {"name": name, "root": str(tmp / "run")}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KERAS_BACKEND", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "saviorrec.cli", *args, "--config",
                               str(config)], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        return done

    return config, cli


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    path = Path(os.environ.get("SAVIORREC_DATA", MOVIELENS_DIR))
    if not (path / "ratings.csv").is_file():
        pytest.fail(f"MovieLens data not found at {path}: set SAVIORREC_DATA (see README)")
    return path


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    """The MovieLens config with its run folder in tmp_path."""
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml")
    return cfg.with_overrides(run={"root": str(tmp_path / "run")})


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local SparkSession for the whole test session (start-up is slow)."""
    from pyspark.sql import SparkSession

    # Python workers run the tests' interpreter (the venv's packages), whatever PATH holds.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    session = (
        SparkSession.builder.master("local[2]")
        .appName("saviorrec-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    yield session
    session.stop()


@contextlib.contextmanager
def serve_process(config: Path, port: int, log: Path, ready: Callable[[], bool], *,
                  timeout_s: float, what: str = "saviorrec serve") -> Iterator[subprocess.Popen]:
    """A real ``saviorrec serve --config config --port port`` (output in ``log``), once
    ``ready()`` says so (OSError while it starts counts as not yet); the test fails with the log's
    tail if it exits or is not ready in ``timeout_s``. Stopped on exit (terminate, then kill if a
    kept connection holds uvicorn's graceful shutdown past 60 s)."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "saviorrec.cli", "serve", "--config", str(config),
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ready():
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not open port {port} within {timeout}s")


class RedisServer:
    """A real redis-server on a free loopback port; restartable (for fault tests)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install -y redis-server`")
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_server_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, password="s3cret-Pa55")
    server.start()
    yield server
    server.stop()
