"""Entry points of the Feast stage (``saviorrec features apply|materialize|training-set``).

``get_store`` and ``online_features`` are the public helpers for serving.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from feast import FeatureStore

from feature_repo.definitions import build, spark_folder_glob
from feature_repo.online import (
    UNKNOWN_ENTITIES,
    OnlineFeatures,
    OnlineStoreUnavailable,
    UserSequence,
    online_features,
    redis_errors,
)
from feature_repo.profiles import repo_config, write_run_repo
from feature_repo.training import training_set
from saviorrec.config import Config
from saviorrec.lake import Lake

__all__ = [
    "UNKNOWN_ENTITIES", "OnlineFeatures", "OnlineStoreUnavailable", "UserSequence", "apply",
    "apply_and_materialize", "get_store", "materialize", "online_features", "training_set",
]


def get_store(cfg: Config) -> FeatureStore:
    """The Feast store of this run and profile (registry and sqlite in ``Lake.feast_data``)."""
    return FeatureStore(config=repo_config(cfg))


def apply(cfg: Config) -> dict[str, Any]:
    """Register the run's objects in its registry; the run folder becomes a Feast repository
    of its own (``feast -c <run>/feast ...``, profiles.write_run_repo)."""
    write_run_repo(cfg)
    store, defs = get_store(cfg), build(cfg)
    with redis_errors(store):
        store.apply(defs.objects())
    return {
        "profile": cfg.feast.profile,
        "registry": str(Lake.from_config(cfg).feast_registry),
        "feast_repo": str(Lake.from_config(cfg).feast_data),
        "entities": [e.name for e in store.list_entities()],
        "feature_views": sorted(v.name for v in store.list_feature_views()),
        "feature_services": sorted(s.name for s in store.list_feature_services()),
    }


def apply_and_materialize(cfg: Config) -> dict[str, Any]:
    """The pipeline's features stage: apply the definitions, then materialize first event..now."""
    return {"apply": apply(cfg), "materialize": materialize(cfg, None, None)}


def _source_paths(cfg: Config) -> dict[str, tuple[Path, str, str]]:
    """view -> (path on disk, duckdb scan expression, join key)."""
    lake = Lake.from_config(cfg)
    folders = {"item_stats": (lake.spark("item_stats"), "item_id"),
               "user_sequence": (lake.spark("sequences"), "user_id")}
    out = {v: (p, f"read_parquet('{spark_folder_glob(p)}')", k) for v, (p, k) in folders.items()}
    out["item_multimodal"] = (lake.item_multimodal, f"read_parquet('{lake.item_multimodal}')",
                              "item_id")
    for view, (path, _, _) in out.items():
        if not path.exists():
            raise FileNotFoundError(f"feature view {view}: source {path} does not exist "
                                    "(run the stage that writes it)")
    return out


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"materialize: {text!r} is not an ISO date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def materialize(cfg: Config, start: str | None = None, end: str | None = None) -> dict[str, Any]:
    """Load the latest row per entity in [start, end] into the online store.

    Defaults: start = the earliest event_timestamp of any source, end = now. An explicit range,
    never ``materialize_incremental`` first (that would start at now - TTL).
    """
    sources = _source_paths(cfg)
    con = duckdb.connect()
    if start is None:
        firsts = [con.execute(f"SELECT min(event_timestamp) FROM {scan}").fetchone()[0]
                  for _, scan, _ in sources.values()]
        first = min(f for f in firsts if f is not None)
        start_dt = first.astimezone(UTC)
    else:
        start_dt = _parse_time(start)
    end_dt = datetime.now(UTC) if end is None else _parse_time(end)
    if end_dt < start_dt:
        raise ValueError(f"materialize: end {end_dt} is before start {start_dt}")
    store = get_store(cfg)
    began = time.perf_counter()
    with redis_errors(store):
        store.materialize(start_date=start_dt, end_date=end_dt)
    entities = {
        view: con.execute(
            f"SELECT count(DISTINCT {key}) FROM {scan} WHERE event_timestamp BETWEEN ? AND ?",
            [start_dt, end_dt],
        ).fetchone()[0]
        for view, (_, scan, key) in sources.items()
    }
    return {"profile": cfg.feast.profile, "start": start_dt.isoformat(),
            "end": end_dt.isoformat(), "entities": entities,
            "seconds": round(time.perf_counter() - began, 3)}
