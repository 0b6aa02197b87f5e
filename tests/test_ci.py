"""`.ci/run` starts only servers that tests use: none, since every test that needs a server
(redis-server, a Spark master and worker) starts its own on a free port and stops it."""

from __future__ import annotations

import re

from saviorrec.config import REPO_ROOT

SERVERS = r"redis-server|spark-class|start-master|start-worker|--daemonize|uvicorn|saviorrec serve"


def commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_starts_no_server_and_runs_the_readme_test_command() -> None:
    lines = commands((REPO_ROOT / ".ci" / "run").read_text())
    assert not [line for line in lines if re.search(SERVERS, line)], lines
    assert lines[-1] == "make test"
    assert "make test" in (REPO_ROOT / "README.md").read_text()


def test_no_test_reads_a_server_that_ci_would_have_to_start() -> None:
    # The environment CI used to export for a shared redis-server: no test reads it, so none
    # depends on a server started outside the tests.
    for path in (REPO_ROOT / "tests").glob("*.py"):
        if path.name != "test_ci.py":
            assert "SAVIORREC_REDIS_URL" not in path.read_text(), path.name
