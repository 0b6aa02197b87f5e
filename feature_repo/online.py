"""Online reads for serving: one user's sequence and one batched read of all its items.

The serving app reaches Feast only through this module's public functions (and
:mod:`feature_repo.redis_reader`): :func:`open_online_store`, :func:`online_features`,
:func:`read_sequence`, :func:`read_items`, :func:`item_defaults`, :func:`ping`,
:func:`rqvae_versions` and :func:`sqlite_file`.

Unknown entities get documented defaults and are counted in :data:`UNKNOWN_ENTITIES`:
an unknown user has an empty sequence (``item_ids`` [], ``seq_len`` 0, ``known`` False,
``stats`` None: the serving tensors give it a new user's statistics); an item without statistics gets
``saviorrec.schema.ITEM_STAT_DEFAULTS``; an item without a multimodal row gets a zero embedding
of d, semantic ids all 0 (L + 1 of them) and empty version strings. d and L + 1 are read from
the tags of the ``item_multimodal`` view, recorded at apply time from the config.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import redis.exceptions
from feast import FeatureStore
from feast.infra.online_stores.helpers import compute_table_id
from feast.repo_config import RepoConfig

from feature_repo.definitions import ITEM_KEY, TAG_EMBEDDING_DIM, TAG_SEMANTIC_IDS_LEN, USER_KEY
from feature_repo.fields import feature_names
from feature_repo.profiles import redis_connection_string, repo_dir, store_settings
from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.schema import (
    ITEM_MULTIMODAL,
    ITEM_STAT_DEFAULTS,
    ITEM_STATS,
    PADDING_ITEM_ID,
    SEQUENCES,
    USER_STAT_NUMERIC,
)

log = logging.getLogger(__name__)

STAT_FEATURES = feature_names(ITEM_STATS, keys=(ITEM_KEY,))
MULTIMODAL_FEATURES = feature_names(ITEM_MULTIMODAL, keys=(ITEM_KEY,))
SEQUENCE_FEATURES = feature_names(SEQUENCES, keys=(USER_KEY,))
ITEM_REFS = [f"item_stats:{n}" for n in STAT_FEATURES] + [
    f"item_multimodal:{n}" for n in MULTIMODAL_FEATURES
]
SEQUENCE_REFS = [f"user_sequence:{n}" for n in SEQUENCE_FEATURES]

# Unknown entities met by online_features since start-up: users, item_stats, item_multimodal.
UNKNOWN_ENTITIES: Counter[str] = Counter()
_count_lock = threading.Lock()


class OnlineStoreUnavailable(RuntimeError):
    """The online store cannot be reached; names host:port, never a password."""


class UserSequence(NamedTuple):
    item_ids: list[int]  # left-padded with PADDING_ITEM_ID, as stored
    seq_len: int
    known: bool
    stats: tuple[float, ...] | None = None  # USER_STAT_NUMERIC values; None when unknown


class OnlineFeatures(NamedTuple):
    sequence: UserSequence
    items: dict[int, dict[str, Any]]  # every requested and sequence item, defaults filled in
    missing: list[int]  # items without a row in item_stats or item_multimodal (sorted)


def open_online_store(cfg: Config, redis_url: str | None = None) -> FeatureStore:
    """The run's store for online reads, its registry loaded once and never refreshed (no reload
    on the request path); in production, Redis at ``redis_url`` (default: $feast.redis_env)."""
    registry = Lake.from_config(cfg).feast_registry
    if not registry.is_file():
        raise FileNotFoundError(f"Feast registry {registry} not found: run "
                                "`saviorrec features apply` and `saviorrec features materialize`")
    settings = store_settings(cfg)
    settings["registry"]["cache_ttl_seconds"] = 0  # 0 = load once, never refresh
    if cfg.feast.profile == "production" and redis_url is not None:
        settings["online_store"]["connection_string"] = redis_connection_string(
            redis_url, cfg.feast.redis_timeout_s)
    return FeatureStore(config=RepoConfig(repo_path=repo_dir(cfg), **settings))


def sqlite_file(store: FeatureStore) -> tuple[Path, str] | None:
    """(path, table of the user_sequence view) of a sqlite online store; None for Redis."""
    config = store.config
    if config.online_store.type != "sqlite":
        return None
    table = compute_table_id(config.project, store.get_feature_view("user_sequence"),
                             config.registry.enable_online_feature_view_versioning)
    path = Path(config.online_store.path)  # Feast resolves a relative path from the repo
    return (path if path.is_absolute() else Path(config.repo_path) / path), table


def ping(store: FeatureStore) -> None:
    """One real round trip to the online store (raises its error)."""
    store.get_online_features(features=["user_sequence:seq_len"], entity_rows=[{USER_KEY: 0}])


def rqvae_versions(store: FeatureStore, item_ids: list[int]) -> set[str]:
    """Distinct rqvae_version of those items that have a multimodal row online."""
    if not item_ids:
        return set()
    rows = store.get_online_features(
        features=["item_multimodal:rqvae_version"],
        entity_rows=[{ITEM_KEY: int(i)} for i in dict.fromkeys(item_ids)],
    ).to_dict()
    return {v for v in rows["rqvae_version"] if v}


def _redis_params(store: FeatureStore) -> tuple[str, str | None]:
    online = store.config.online_store
    conn = getattr(online, "connection_string", "")
    parts = conn.split(",")
    password = next((p.split("=", 1)[1] for p in parts if p.startswith("password=")), None)
    return parts[0], password


@contextmanager
def redis_errors(store: FeatureStore) -> Iterator[None]:
    """Turn a Redis connection failure into OnlineStoreUnavailable naming host:port only."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        address, password = _redis_params(store)
        detail = str(e).replace(password, "***") if password else str(e)
        raise OnlineStoreUnavailable(
            f"Redis online store at {address} is unreachable: {type(e).__name__}: {detail}"
        ) from None


@lru_cache(maxsize=16)
def item_defaults(store: FeatureStore) -> dict[str, Any]:
    """Feature values of an item with no row (see the module docstring)."""
    tags = store.get_feature_view("item_multimodal").tags
    return {
        **ITEM_STAT_DEFAULTS,
        "embedding": [0.0] * int(tags[TAG_EMBEDDING_DIM]),
        "semantic_ids": [0] * int(tags[TAG_SEMANTIC_IDS_LEN]),
        "encoder_version": "",
        "rqvae_version": "",
    }


def _count(kind: str, n: int) -> None:
    if n:
        with _count_lock:
            UNKNOWN_ENTITIES[kind] += n


def read_sequence(store: FeatureStore, user_id: int) -> UserSequence:
    with redis_errors(store):
        row = store.get_online_features(
            features=SEQUENCE_REFS, entity_rows=[{USER_KEY: int(user_id)}]
        ).to_dict()
    ids = row["seq_item_ids"][0]
    if ids is None:
        _count("users", 1)
        return UserSequence(item_ids=[], seq_len=0, known=False)
    return UserSequence(item_ids=[int(i) for i in ids], seq_len=int(row["seq_len"][0]), known=True,
                        stats=user_stats({n: row[n][0] for n in USER_STAT_NUMERIC}))


def user_stats(values: dict[str, Any]) -> tuple[float, ...] | None:
    """USER_STAT_NUMERIC as floats; None when the row predates them (re-run the sequences job)."""
    if any(values[n] is None for n in USER_STAT_NUMERIC):
        return None
    return tuple(float(values[n]) for n in USER_STAT_NUMERIC)


def read_items(store: FeatureStore, item_ids: list[int]) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """ONE batched online read of both item views for the distinct ids; defaults filled in."""
    unique = list(dict.fromkeys(int(i) for i in item_ids))
    if not unique:
        return {}, []
    with redis_errors(store):
        cols = store.get_online_features(
            features=ITEM_REFS, entity_rows=[{ITEM_KEY: i} for i in unique]
        ).to_dict()
    defaults = item_defaults(store)
    items: dict[int, dict[str, Any]] = {}
    no_stats, no_multimodal = [], []
    for row, item_id in enumerate(unique):
        values = {name: cols[name][row] for name in STAT_FEATURES + MULTIMODAL_FEATURES}
        if values["pv"] is None:
            no_stats.append(item_id)
        if values["embedding"] is None:
            no_multimodal.append(item_id)
        items[item_id] = {k: defaults[k] if v is None else v for k, v in values.items()}
    _count("item_stats", len(no_stats))
    _count("item_multimodal", len(no_multimodal))
    return items, sorted(set(no_stats) | set(no_multimodal))


def online_features(store: FeatureStore, user_id: int, item_ids: list[int]) -> OnlineFeatures:
    """The user's current sequence, then one read of candidates + sequence items together."""
    sequence = read_sequence(store, user_id)
    seq_items = [i for i in sequence.item_ids if i != PADDING_ITEM_ID]
    items, missing = read_items(store, list(item_ids) + seq_items)
    if missing:
        log.debug("user %d: %d of %d items unknown to the online store",
                  user_id, len(missing), len(items))
    return OnlineFeatures(sequence=sequence, items=items, missing=missing)
