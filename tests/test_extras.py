"""Installs by stage: pyproject.toml's extras give each stage its libraries and no other stage's,
so a GPU host installs the ranker without TensorFlow or Spark; the tools that carry wheels read
them (tools/requirements.py) and name no interpreter of a particular machine."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import load_benchmark

from saviorrec.config import REPO_ROOT

requirements = load_benchmark("requirements", "tools").requirements
HEAVY = {"tensorflow", "pyspark", "torch", "feast", "keras"}


def names(extras: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements(extras)}


def test_the_base_holds_no_stage_library() -> None:
    assert names(["base"]) & HEAVY == set()


@pytest.mark.parametrize(("extra", "has", "lacks"), [
    ("ranker", {"keras", "keras-rs"}, {"tensorflow", "pyspark", "torch", "feast"}),
    ("spark", {"pyspark"}, {"tensorflow", "torch", "feast", "keras"}),
    ("encoder", {"torch", "transformers", "faiss-cpu"}, {"tensorflow", "pyspark", "keras"}),
    ("serve", {"tensorflow", "feast", "fastapi", "uvicorn"}, {"torch", "pyspark", "keras"}),
])
def test_each_extra_holds_its_stage_only(extra: str, has: set[str], lacks: set[str]) -> None:
    found = names([extra])
    assert has <= found and not lacks & found, found


def test_all_is_every_extra_and_dev_includes_all() -> None:
    every = ["spark", "encoder", "features", "ranker", "tensorflow", "serve"]
    assert names(["all"]) == names(every)
    assert names(every) | {"pytest", "import-linter"} <= names(["dev"])


def test_requirements_cli_skips_what_the_host_has() -> None:
    out = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "requirements.py"), "encoder",
                          "--skip", "torch", "transformers"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "faiss-cpu==1.15.1" in out and not any(r.startswith(("torch", "transformers"))
                                                   for r in out)


def test_tools_name_no_interpreter_path() -> None:
    for script in (REPO_ROOT / "tools").glob("*.sh"):
        text = script.read_text()
        assert not re.search(r"/opt/|\.venv/bin", text), script.name
