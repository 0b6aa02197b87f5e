"""The Feast store configuration of a run, for the local or the production profile.

Store types live in the two yaml files of this folder (``feature_store.yaml``: duckdb + sqlite,
``feature_store.production.yaml``: Spark + Redis); what differs per run is filled in here: the
registry and sqlite file in the run's ``Lake.feast_data``, the Spark master from the config and
the Redis connection from the environment variable ``cfg.feast.redis_env``. ``write_run_repo``
writes the same settings into the run folder, beside a repo.py, for Feast's own CLI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from feast.repo_config import RepoConfig

from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake, atomic_path, write_run_config

PROFILE_YAML = {"local": "feature_store.yaml", "production": "feature_store.production.yaml"}


class RedisConfigError(ValueError):
    """A Redis URL that cannot be used; the message never contains the password."""


def repo_dir(cfg: Config) -> Path:
    path = Path(cfg.feast.repo_dir)
    return path if path.is_absolute() else REPO_ROOT / path


def _split_redis_url(url: str) -> tuple[str, int, int, str | None, str | None, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise RedisConfigError(
            f"Redis URL must look like redis://[:password@]host:port/db, got scheme "
            f"{parts.scheme!r}"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise RedisConfigError(f"Redis URL for host {parts.hostname!r} has a bad port") from None
    db_text = parts.path.lstrip("/") or "0"
    if not parts.hostname or not db_text.isdigit():
        raise RedisConfigError(
            f"Redis URL needs a host and an integer db: host={parts.hostname!r}, db={db_text!r}"
        )
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    return parts.hostname, port, int(db_text), username, password, parts.scheme == "rediss"


def redis_address(url: str) -> str:
    """``host:port`` of a Redis URL: safe to print (no user, no password)."""
    host, port, *_ = _split_redis_url(url)
    return f"{host}:{port}"


def redis_connection_string(url: str, timeout_s: float | None = None) -> str:
    """Convert redis://[user:password@]host:port/db into Feast's host:port,db=..,password=.."""
    host, port, db, username, password, ssl = _split_redis_url(url)
    params = [f"{host}:{port}", f"db={db}"]
    if timeout_s is not None:
        params += [f"socket_connect_timeout={timeout_s}", f"socket_timeout={timeout_s}"]
    if ssl:
        params.append("ssl=true")
    for key, value in (("username", username), ("password", password)):
        if value is None:
            continue
        if "," in value:  # Feast splits its connection string on commas
            raise RedisConfigError(f"Redis {key} for {host}:{port} contains ',' which Feast "
                                   "cannot pass on; choose one without")
        params.append(f"{key}={value}")
    return ",".join(params)


def redis_url(cfg: Config) -> str:
    url = os.environ.get(cfg.feast.redis_env)
    if not url:
        raise RedisConfigError(
            f"profile production needs the Redis URL in ${cfg.feast.redis_env} "
            "(redis://[:password@]host:port/db)"
        )
    return url


def store_settings(cfg: Config, *, for_file: bool = False) -> dict[str, Any]:
    """The yaml of the profile with this run's paths and connections filled in.

    ``for_file``: the settings of the run's own feature_store.yaml (``Lake.feast_yaml``): paths
    relative to its folder, and the Redis connection left to ``${SAVIORREC_FEAST_REDIS}`` as in
    feature_store.production.yaml, so that no password is written to disk."""
    profile = cfg.feast.profile
    settings = yaml.safe_load((repo_dir(cfg) / PROFILE_YAML[profile]).read_text())
    lake = Lake.from_config(cfg)

    def path(p: Path) -> str:
        return str(p.relative_to(lake.feast_data)) if for_file else str(p)

    settings["registry"] = {"path": path(lake.feast_registry), "cache_ttl_seconds": 60}
    if profile == "production":
        if not for_file:
            settings["online_store"]["connection_string"] = redis_connection_string(
                redis_url(cfg), cfg.feast.redis_timeout_s
            )
        settings["offline_store"]["spark_conf"] = {
            **settings["offline_store"].get("spark_conf", {}),
            **cfg.spark.conf(),
            "spark.app.name": f"{cfg.spark.app_name}-feast",
        }
    else:
        settings["online_store"]["path"] = path(lake.feast_sqlite)
    return settings


RUN_REPO_PY = '''"""Feast definitions of this run: `feast -c <run>/feast apply | plan | feature-views list ...`.

Written by saviorrec (feature_repo/profiles.py, write_run_repo) beside the run's
feature_store.yaml; the objects are feature_repo.definitions.build of the run's resolved
configuration, ../config.yaml.
"""

from pathlib import Path

from feature_repo.definitions import build
from saviorrec.config import load_config

_defs = build(load_config(Path(__file__).resolve().parent.parent / "config.yaml"))
globals().update({name: getattr(_defs, name) for name in _defs.__dataclass_fields__})
'''


def write_run_repo(cfg: Config) -> Path:
    """Make the run folder a Feast repository of its own: its resolved config
    (``Lake.run_config``), and in ``Lake.feast_data`` a feature_store.yaml of its profile and a
    repo.py building the run's objects, so that ``feast -c <run>/feast ...`` works on any run,
    --quick included. Returns the folder."""
    lake = Lake.from_config(cfg)
    write_run_config(cfg)
    with atomic_path(lake.feast_yaml) as tmp:
        tmp.write_text(f"# Feast store of the run {cfg.run.name!r}, profile {cfg.feast.profile}; "
                       "written by saviorrec.\n"
                       + yaml.safe_dump(store_settings(cfg, for_file=True), sort_keys=False))
    with atomic_path(lake.feast_definitions) as tmp:
        tmp.write_text(RUN_REPO_PY)
    return lake.feast_data


def repo_config(cfg: Config) -> RepoConfig:
    Lake.from_config(cfg).feast_data.mkdir(parents=True, exist_ok=True)
    return RepoConfig(repo_path=repo_dir(cfg), **store_settings(cfg))


def main(argv: list[str]) -> int:
    """``python -m feature_repo.profiles redis-connection [ENV]``: the Feast connection string."""
    if argv[:1] != ["redis-connection"]:
        print(__doc__ + "\nusage: python -m feature_repo.profiles redis-connection [ENV]")
        return 2
    env = argv[1] if len(argv) > 1 else Config().feast.redis_env
    print(redis_connection_string(os.environ.get(env, "")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
