"""The serving side of the Feast online store: open it once, read per request, name it on failure.

The store is the run's (feature_repo.profiles), reached only through feature_repo's public
functions (feature_repo.online, feature_repo.redis_reader): sqlite in the local profile, Redis
from ``$feast.redis_env`` in production, with the password optionally in
``$serving.redis_password_env``. The registry is loaded once at start-up and never refreshed on
the request path (re-apply and restart to serve new definitions). In production the item and
sequence reads go through :mod:`feature_repo.redis_reader` (``serving.online_reader: auto``),
Feast's own read path with ``feast``. Connections are redis-py's pool: a request after the store
comes back simply reconnects, so the service recovers without a restart.

Item features go through an in-process :class:`~serving.item_cache.ItemCache`
(``serving.item_cache_ttl_s`` > 0 and ``serving.item_cache_items`` > 0): only the items not
cached or older than the TTL are read from the store. The user's sequence is read from the store
on every request and never cached, so a store outage still fails every request with
StoreUnavailable (503), cached items or not; the cache never serves a request on its own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import redis.exceptions

from feature_repo.online import (
    FeatureStore,
    OnlineFeatures,
    OnlineStoreUnavailable,
    UserSequence,
    item_defaults,
    online_features,
    open_online_store,
    ping,
    read_items,
    read_sequence,
    rqvae_versions,
    sqlite_file,
)
from feature_repo.profiles import redis_address, redis_url, store_settings
from feature_repo.redis_reader import RedisDirectReader, redis_client
from saviorrec.config import Config
from saviorrec.schema import PADDING_ITEM_ID
from serving.item_cache import CachedItem, ItemCache
from serving.redact import redact

log = logging.getLogger(__name__)

_STORE_ERRORS = (OnlineStoreUnavailable, redis.exceptions.RedisError, sqlite3.Error, OSError)


class StoreUnavailable(RuntimeError):
    """The online store cannot be read; the message names it (host:port or path), no secret."""


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url
    user = quote(parts.username, safe="") if parts.username else ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}"
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc))


def _redis_url(cfg: Config) -> str:
    """$feast.redis_env, with the password of $serving.redis_password_env when it has none."""
    password = os.environ.get(cfg.serving.redis_password_env, "")
    return _with_password(redis_url(cfg), password) if password else redis_url(cfg)


def open_store(cfg: Config) -> FeatureStore:
    """The run's FeatureStore with a registry cache that never expires (no per-request reload)."""
    url = _redis_url(cfg) if cfg.feast.profile == "production" else None
    return open_online_store(cfg, redis_url=url)


def store_name(cfg: Config) -> str:
    """What the messages call the store: ``Redis online store at host:port`` or the sqlite path."""
    if cfg.feast.profile == "production":
        try:
            return f"Redis online store at {redis_address(redis_url(cfg))}"
        except ValueError:
            return f"Redis online store from ${cfg.feast.redis_env}"
    return f"sqlite online store at {Path(store_settings(cfg)['online_store']['path'])}"


def item_cache(cfg: Config) -> ItemCache | None:
    """The configured item cache; None when either setting is 0 (every read goes to the store)."""
    serving = cfg.serving
    if serving.item_cache_ttl_s <= 0 or serving.item_cache_items <= 0:
        return None
    return ItemCache(ttl_s=serving.item_cache_ttl_s, max_items=serving.item_cache_items,
                     missing_ttl_s=serving.item_cache_missing_ttl_s,
                     bypass=(serving.item_cache_min_hit_rate, serving.item_cache_probe_every))


def _as_arrays(values: dict[str, Any]) -> dict[str, Any]:
    """The list features as numpy arrays of the model's dtypes: build_inputs then stacks
    buffers instead of converting 64 Python floats per item (and the entry is 3x smaller)."""
    return {**values, "embedding": np.asarray(values["embedding"], np.float32),
            "semantic_ids": np.asarray(values["semantic_ids"], np.int64)}


class SqliteFile:
    """The sqlite online store's file as a new reader finds it (the local profile's /readyz).

    Feast keeps one connection open, which goes on reading a removed or replaced file, so a
    round trip through Feast stays "ok" after the file is gone. :meth:`check` opens the file
    afresh, read-only (it never creates one), reads the sequence table, and compares the file
    with the one the service opened: a replaced file is served only after a restart.
    """

    def __init__(self, name: str, path: Path, table: str) -> None:
        self.name, self.path, self.table = name, path, table
        self.opened = self._identity()  # None: no file yet (Feast creates it on first read)

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def check(self) -> None:
        """Raise StoreUnavailable unless the file is there, readable, and the one opened."""
        identity = self._identity()
        if identity is None:
            raise StoreUnavailable(f"{self.name} cannot be read: the file does not exist")
        try:
            with closing(sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)) as conn:
                conn.execute(f'SELECT 1 FROM "{self.table}" LIMIT 1').fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.name} cannot be read: {type(e).__name__}: {e}"
                                   ) from None
        if self.opened is None:
            self.opened = identity
        elif identity != self.opened:
            raise StoreUnavailable(f"{self.name} was replaced since the service opened it: "
                                   "restart the service to serve the new file")


def sqlite_check(store: FeatureStore, name: str) -> SqliteFile | None:
    """The local profile's sqlite file check; None for Redis."""
    found = sqlite_file(store)
    return None if found is None else SqliteFile(name, *found)


class FeatureReader:
    """``read(user_id, item_ids)``: the user's sequence, then one batched read of the items
    (candidates and sequence items) that the item cache does not hold."""

    def __init__(self, cfg: Config, store: FeatureStore | None = None) -> None:
        self.name = store_name(cfg)
        self.store = store if store is not None else open_store(cfg)
        item_defaults(self.store)  # load the registry now, fail early
        self.direct: RedisDirectReader | None = None
        if cfg.feast.profile == "production" and cfg.serving.online_reader == "auto":
            client = redis_client(_redis_url(cfg), cfg.feast.redis_timeout_s)
            self.direct = RedisDirectReader(self.store, client)
        self.item_cache = item_cache(cfg)
        self.sqlite_file = sqlite_check(self.store, self.name)

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        detail = redact(f"{type(error).__name__}: {error}")
        if isinstance(error, OnlineStoreUnavailable):  # already names host:port
            return StoreUnavailable(redact(str(error)))
        return StoreUnavailable(f"{self.name} is unreachable: {detail}")

    def read(self, user_id: int, item_ids: list[int]) -> OnlineFeatures:
        try:
            if self.item_cache is None or not self.item_cache.use():
                if self.direct is not None:
                    return self.direct.read(user_id, item_ids)
                return online_features(self.store, user_id, item_ids)
            return self._read_cached(user_id, item_ids, self.item_cache)
        except _STORE_ERRORS as e:
            raise self._unavailable(e) from None

    def _read_cached(self, user_id: int, item_ids: list[int], cache: ItemCache
                     ) -> OnlineFeatures:
        sequence = self._read_sequence(user_id)  # never cached: a store outage surfaces here
        seq_items = [i for i in sequence.item_ids if i != PADDING_ITEM_ID]
        unique = list(dict.fromkeys(int(i) for i in [*item_ids, *seq_items]))
        cached, absent = cache.get_many(unique)
        if absent:
            values, missing = self._read_items(absent)
            no_row = set(missing)
            fresh = {i: CachedItem(_as_arrays(values[i]), i in no_row) for i in absent}
            cache.put_many(fresh)
            cached.update(fresh)
        return OnlineFeatures(sequence=sequence, items={i: cached[i].values for i in unique},
                              missing=sorted(i for i in unique if cached[i].missing))

    def _read_sequence(self, user_id: int) -> UserSequence:
        if self.direct is not None:
            return self.direct.read_sequence(user_id)
        return read_sequence(self.store, user_id)

    def _read_items(self, item_ids: list[int]) -> tuple[dict[int, dict[str, object]], list[int]]:
        if self.direct is not None:
            return self.direct.read_items(item_ids)
        return read_items(self.store, item_ids)

    def defaults(self) -> dict[str, object]:
        return item_defaults(self.store)

    def ping(self) -> None:
        """One real round trip to the online store, and on sqlite a fresh read of its file
        (raises StoreUnavailable)."""
        try:
            if self.direct is not None:
                self.direct.client.ping()
                return
            ping(self.store)
        except _STORE_ERRORS as e:
            raise self._unavailable(e) from None
        if self.sqlite_file is not None:
            self.sqlite_file.check()

    def rqvae_versions(self, item_ids: list[int]) -> set[str]:
        """Distinct rqvae_version of those items that have a multimodal row online."""
        try:
            return rqvae_versions(self.store, item_ids)
        except _STORE_ERRORS as e:
            raise self._unavailable(e) from None
