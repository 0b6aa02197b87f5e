"""Each run folder describes itself (issue 27 item 3): its resolved config (overlays such as
--quick applied) and a Feast repository of its own, so that the real ``feast`` CLI works on any
run; a relative $SAVIORREC_CONFIG is read from the folder the command started in, although
Feast changes into its repo folder before importing repo.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_feast_lake import DIM, SEQ_LEN, SID_LEN, write_lake
from test_feast_store import assert_online_equals_offline, cli_store_yaml

from feature_repo import store as fs
from feature_repo.profiles import write_run_repo
from saviorrec.cli import main
from saviorrec.config import CONFIG_ENV, REPO_ROOT, ConfigError, config_path_from_env, load_config

FEAST = str(Path(sys.executable).parent / "feast")
VIEWS = ("item_stats", "item_multimodal", "user_sequence")


def write_config(tmp_path: Path) -> Path:
    """A MovieLens config file with the small lake's sizes and its run folder in tmp_path."""
    raw = yaml.safe_load((REPO_ROOT / "configs" / "movielens.yaml").read_text())
    raw["run"] = {"name": "feast-cli", "root": str(tmp_path / "run")}
    raw.setdefault("encoder", {})["dim"] = DIM
    raw.setdefault("rqvae", {})["levels"] = SID_LEN - 1
    raw.setdefault("sequences", {})["max_len"] = SEQ_LEN
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def feast(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([FEAST, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_a_quick_run_folder_is_a_feast_repository(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    cfg = load_config(config, (REPO_ROOT / "configs" / "quick.yaml",))
    cfg = cfg.with_overrides(run={"name": "feast-cli-quick", "root": str(tmp_path / "run-quick")})
    lake = write_lake(cfg)
    assert main(["features", "apply", "--config", str(config), "--quick"]) == 0
    capsys.readouterr()
    # the resolved config: the quick overlay's values are in it, and it loads to the same run
    written = load_config(lake.run_config)
    quick = yaml.safe_load((REPO_ROOT / "configs" / "quick.yaml").read_text())
    assert written.ranker.epochs == quick["ranker"]["epochs"] != load_config(config).ranker.epochs
    assert written.data.user_fraction == quick["data"]["user_fraction"]
    assert written == cfg
    # the plain Feast CLI, pointed at the run folder by a relative path from another folder
    listed = feast("-c", "run-quick/feast", "feature-views", "list", cwd=tmp_path)
    assert all(view in listed for view in VIEWS), listed
    feast("-c", str(lake.feast_data), "apply", cwd=REPO_ROOT)  # imports the run's repo.py
    feast("-c", str(lake.feast_data), "materialize", "2020-01-01T00:00:00",
          "2020-02-01T00:00:00", cwd=tmp_path)
    # what Feast's CLI materialized is what saviorrec's own store reads: the same files
    assert_online_equals_offline(fs.get_store(cfg))
    assert "password" not in lake.feast_yaml.read_text()


def test_a_relative_saviorrec_config_with_the_feast_cli(tmp_path: Path) -> None:
    """`cd <folder>; SAVIORREC_CONFIG=config.yaml feast -c feature_repo -f ... apply` as a user
    types it in a shell (which sets $PWD); it failed with a traceback before."""
    config = write_config(tmp_path)
    cfg = load_config(config)
    write_lake(cfg)
    cli_store_yaml(cfg, tmp_path / "feature_store.yaml")
    for args in ("apply", "feature-views list"):
        out = subprocess.run(
            ["bash", "-c", (f'cd "$1" && {CONFIG_ENV}=config.yaml exec "$2" -c "$3" '
                            f'-f feature_store.yaml {args}'), "-", str(tmp_path), FEAST,
             str(REPO_ROOT / "feature_repo")],
            capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert all(view in out.stdout for view in VIEWS), out.stdout
    assert {v.name for v in fs.get_store(cfg).list_feature_views()} == set(VIEWS)


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "default.yaml"
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert config_path_from_env(default) == default
    (tmp_path / "here.yaml").touch()
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.chdir(REPO_ROOT / "feature_repo")  # where Feast is when it imports repo.py
    monkeypatch.setenv(CONFIG_ENV, "here.yaml")
    assert config_path_from_env(default) == tmp_path / "here.yaml"
    monkeypatch.setenv(CONFIG_ENV, "configs/movielens.yaml")  # from the repository root
    assert config_path_from_env(default) == REPO_ROOT / "configs" / "movielens.yaml"
    monkeypatch.setenv(CONFIG_ENV, "nowhere.yaml")
    with pytest.raises(ConfigError, match=rf"\$SAVIORREC_CONFIG = 'nowhere.yaml': no such file "
                       rf"\(tried {tmp_path / 'nowhere.yaml'}, "):
        config_path_from_env(default)


def test_a_production_run_repo_holds_no_password(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write_config(tmp_path)).with_overrides(
        feast={"profile": "production"}, spark={"master": "spark://10.0.0.7:7077"})
    monkeypatch.setenv(cfg.feast.redis_env, "redis://:s3cret-pw@10.0.0.5:6379/2")
    folder = write_run_repo(cfg)
    text = (folder / "feature_store.yaml").read_text()
    assert "s3cret" not in text
    settings = yaml.safe_load(text)
    assert settings["online_store"] == {"type": "redis",
                                        "connection_string": "${SAVIORREC_FEAST_REDIS}"}
    assert settings["registry"]["path"] == "registry.db"  # beside the yaml, wherever the run is
    assert settings["offline_store"]["spark_conf"]["spark.master"] == "spark://10.0.0.7:7077"
