"""The command line: `saviorrec --help` and every command's help (without loading a stage's
libraries), a failing stage's message (stage and cause), and the SAVIORREC_DATA override."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_datasets_bad_input import GOOD_RATINGS, write_folder

from saviorrec.cli import build_parser, main
from saviorrec.config import DATA_ENV, REPO_ROOT, load_config
from saviorrec.lake import Lake
from saviorrec.stages import SPARK_JOB_NAMES, STAGE_NAMES

COMMANDS = ("data", "spark", "stream", "features", "encode", "rqvae", "train", "evaluate",
            "export", "serve", "items", "replay", "run", "report")
HEAVY = ("tensorflow", "torch", "pyspark", "feast", "keras", "jax", "fastapi")


def test_help_lists_every_command_without_loading_a_stage() -> None:
    probe = (f"import sys; from saviorrec.cli import main\ntry:\n    main(['--help'])\n"
             f"except SystemExit as e:\n    assert e.code == 0\n"
             f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=REPO_ROOT)
    assert result.stdout.strip().endswith("loaded: []"), result.stdout
    for command in COMMANDS:
        assert f"    {command} " in result.stdout, command


def test_the_console_script_answers_help() -> None:
    script = Path(sys.executable).with_name("saviorrec")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("usage: saviorrec")


def test_the_parser_has_exactly_the_documented_commands() -> None:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert tuple(subparsers.choices) == COMMANDS  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: saviorrec {command}") and "--config" in out and "--quick" in out
    if command == "spark":
        assert "{" + ",".join([*SPARK_JOB_NAMES, "all"]) + "}" in out
    if command == "run":
        assert ", ".join(STAGE_NAMES) in " ".join(out.split())


def test_an_unknown_command_or_choice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["nope"], ["spark", "nope"], ["run", "--only", "nope"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "invalid choice: 'nope'" in capsys.readouterr().err


def write_config(tmp_path: Path, source_dir: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "cli", "root": str(tmp_path / "run")},
                                    "data": {"source_dir": str(source_dir)}}))
    return path


def test_a_failing_stage_names_the_stage_and_the_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    missing = tmp_path / "no-such-folder"
    config = write_config(tmp_path, missing)
    assert main(["run", "--config", str(config), "--only", "prepare"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("saviorrec run: stage 'prepare' failed: BadInputError: "), err
    assert f"{missing}: MovieLens folder does not exist" in err
    assert "Traceback" not in err
    lake = Lake.from_config(load_config(config))
    assert not lake.metrics.exists()  # no metrics.json holding nothing but versions
    assert load_config(lake.run_config) == load_config(config).with_overrides(
        run={"root": str(tmp_path / "run")})  # the run's resolved config, written first


def test_a_failing_pipeline_as_a_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-such-folder")
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    result = subprocess.run([str(Path(sys.executable).with_name("saviorrec")), "run", "--config",
                             str(config), "--only", "prepare"],
                            capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 1
    assert "saviorrec run: stage 'prepare' failed: BadInputError:" in result.stderr


def test_saviorrec_data_overrides_the_configured_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = write_folder(tmp_path / "elsewhere", GOOD_RATINGS)
    config = write_config(tmp_path, tmp_path / "no-such-folder")
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert load_config(config).source_dir() == (tmp_path / "no-such-folder").resolve()
    monkeypatch.setenv(DATA_ENV, str(source))
    assert load_config(config).source_dir() == source.resolve()
    assert main(["data", "prepare", "--config", str(config)]) == 0
    capsys.readouterr()
    events = pq.read_table(Lake.from_config(load_config(config)).events).to_pydict()
    assert sorted(zip(events["user_id"], events["item_id"], strict=True)) == \
        [(1, 1), (1, 2), (2, 1)]  # the rows of GOOD_RATINGS in the folder the variable names
