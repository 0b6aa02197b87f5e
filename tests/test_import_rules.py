"""The dependency rule (docs/architecture.md, three floors) holds: `lint-imports` keeps every
contract of pyproject.toml's [tool.importlinter], and breaks one when a floor is crossed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saviorrec.config import REPO_ROOT

PACKAGES = ("saviorrec", "spark_jobs", "encoder_torch", "feature_repo", "tf_ranker", "serving")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], check=False, cwd=root,
                          env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_repository_keeps_every_contract() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("saviorrec/schema.py", "import tf_ranker.models", "Floors"),
    ("tf_ranker/data.py", "from encoder_torch import outputs", "Floors"),
    ("serving/tensors.py", "import feast", "reaches Feast only through"),
    ("serving/service.py", "def f():\n    from tf_ranker.export import run_export", "no training code"),
    ("saviorrec/probe.py", "import json", "Every saviorrec module is on a floor"),
])
def test_a_crossed_floor_breaks_a_contract(tmp_path: Path, module: str, line: str,
                                           contract: str) -> None:
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [s for s in result.stdout.splitlines() if s.endswith("BROKEN")]
    assert any(contract in s for s in broken), result.stdout
