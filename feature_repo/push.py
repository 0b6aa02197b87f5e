"""New rows of the item views: offline into their batch sources, online through Feast push.

Onboarding (``saviorrec.onboard``) writes in this order, so that a failure leaves both stores as
they were:

1. :meth:`OnlineSnapshot.take` reads the items' current online fields (a read: a store that is
   down fails here, naming itself, before anything is written);
2. :class:`OfflineWrites` writes the batch sources the push sources wrap: ``item_multimodal``
   (the encoder's single parquet file) is rewritten with the new rows and the old file kept to
   put back; ``item_stats`` (a Spark folder) gains one part file, removed to roll back;
3. :func:`push_online` pushes the rows with ``FeatureStore.push`` (``PushMode.ONLINE``) to
   ``item_multimodal_push`` and ``item_stats_push``;
4. if 3 fails, :meth:`OnlineSnapshot.restore` writes the snapshot back (when the store answers)
   and :meth:`OfflineWrites.rollback` undoes step 2.

Why not ``PushMode.ONLINE_AND_OFFLINE``: Feast 0.67's duckdb offline write rewrites a parquet
source in place (not atomically) and cannot add to a Spark folder read through a glob; the
Spark offline store appends to folders only; neither can be undone. The rows reach the very
batch sources Feast reads (each push source's ``batch_source``) with the lake's atomic writes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore
from feast.data_source import PushMode
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from feature_repo.definitions import ITEM_KEY, ITEM_MULTIMODAL_PUSH, ITEM_STATS_PUSH, USER_KEY
from feature_repo.fields import feature_names
from feature_repo.online import redis_errors, sqlite_file
from saviorrec.config import Config
from saviorrec.lake import Lake, atomic_path, read_table
from saviorrec.schema import ITEM_MULTIMODAL, ITEM_STATS, SEQUENCES, Table

log = logging.getLogger(__name__)

PUSH_SOURCES = {"item_multimodal": ITEM_MULTIMODAL_PUSH, "item_stats": ITEM_STATS_PUSH}
VIEW_TABLES = {"item_multimodal": ITEM_MULTIMODAL, "item_stats": ITEM_STATS}
# What OnlineSnapshot can take: view -> (its table, its join key). user_sequence for the replay
# (saviorrec/replay.py), which writes user rows and puts them back.
SNAPSHOT_VIEWS: dict[str, tuple[Table, str]] = {
    **{view: (table, ITEM_KEY) for view, table in VIEW_TABLES.items()},
    "user_sequence": (SEQUENCES, USER_KEY)}


def offline_source(cfg: Config, view: str) -> Path:
    """The batch source of an item view: item_multimodal's file, item_stats' Spark folder."""
    lake = Lake.from_config(cfg)
    return {"item_multimodal": lake.item_multimodal, "item_stats": lake.spark("item_stats")}[view]


class OfflineWrites:
    """Reversible writes of parquet sources: ``rollback()`` undoes them, ``commit()`` keeps them."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._backups: list[Path] = []

    def append_to_file(self, path: Path, table: pa.Table, schema: Table) -> None:
        """Rewrite the parquet file ``path`` (schema ``schema``) with ``table``'s rows after its
        own (a new file when there is none); the old file is kept until commit."""
        new = table.select(schema.names).cast(schema.arrow_schema())
        old = read_table(path, schema).select(schema.names).cast(schema.arrow_schema()) \
            if path.exists() else None
        merged = new if old is None else pa.concat_tables([old, new])
        backup = path.with_name(f".{path.name}.backup-{uuid.uuid4().hex[:8]}")
        if old is not None:
            os.link(path, backup)  # the old file's bytes stay under a second name
            self._backups.append(backup)
        with atomic_path(path) as tmp:
            pq.write_table(merged, tmp, coerce_timestamps="us", allow_truncated_timestamps=False)
        self._undo.append(lambda: os.replace(backup, path) if old is not None else path.unlink())

    def add_part(self, folder: Path, table: pa.Table, schema: Table) -> Path:
        """One more part file in the Spark output ``folder``; removed by rollback."""
        if not folder.is_dir():
            raise FileNotFoundError(f"{schema.name}: {folder} does not exist (run the stage "
                                    "that writes it)")
        part = folder / f"part-onboard-{uuid.uuid4().hex}.parquet"
        table = table.select(schema.names).cast(schema.arrow_schema())
        with atomic_path(part) as tmp:  # a dot-name ending .tmp-*: no reader's glob sees it
            pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=False)
        self._undo.append(part.unlink)
        return part

    def rollback(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._backups.clear()

    def commit(self) -> None:
        for backup in self._backups:
            backup.unlink(missing_ok=True)
        self._undo.clear()
        self._backups.clear()


def _entity_key(store: FeatureStore, entity_id: int, join_key: str = ITEM_KEY) -> bytes:
    key = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(entity_id))])
    return serialize_entity_key(
        key, entity_key_serialization_version=store.config.entity_key_serialization_version)


class OnlineSnapshot:
    """The online fields of some entities (items, or users) in some views (SNAPSHOT_VIEWS, all
    of one join key), as they were, to write back on failure."""

    def __init__(self, store: FeatureStore, entity_ids: list[int], views: tuple[str, ...]) -> None:
        keys = {SNAPSHOT_VIEWS[v][1] for v in views}
        if len(keys) != 1:
            raise ValueError(f"views {views}: one join key per snapshot, these have {sorted(keys)}")
        self.store, self.entity_ids, self.views = store, [int(i) for i in entity_ids], views
        self.join_key = keys.pop()
        self._redis: list[tuple[bytes, dict[bytes, bytes | None]]] = []
        self._sqlite: dict[str, list[tuple[Any, ...]]] = {}

    @classmethod
    def take(cls, store: FeatureStore, entity_ids: list[int],
             views: tuple[str, ...] = tuple(PUSH_SOURCES)) -> OnlineSnapshot:
        snapshot = cls(store, entity_ids, views)
        with redis_errors(store):
            if store.config.online_store.type == "sqlite":
                snapshot._take_sqlite()
            else:
                snapshot._take_redis()
        return snapshot

    # Redis: Feast keeps every view of an entity in one hash (key = entity key + project);
    # a view's fields are mmh3("<view>:<feature>") and "_ts:<view>" (feast RedisOnlineStore).
    def _redis_client(self) -> Any:
        return self.store._get_provider().online_store._get_client(
            self.store.config.online_store)

    def _fields(self) -> list[bytes]:
        versioning = self.store.config.registry.enable_online_feature_view_versioning
        fields = []
        for view in self.views:
            name = compute_versioned_name(self.store.get_feature_view(view), versioning)
            table, key = SNAPSHOT_VIEWS[view]
            fields += [_mmh3(f"{name}:{n}") for n in feature_names(table, keys=(key,))]
            fields.append(f"_ts:{name}".encode())
        return fields

    def _take_redis(self) -> None:
        client, fields = self._redis_client(), self._fields()
        project = self.store.config.project.encode()
        keys = [_entity_key(self.store, i, self.join_key) + project for i in self.entity_ids]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, fields)
            replies = pipe.execute()
        self._redis = [(key, dict(zip(fields, values, strict=True)))
                       for key, values in zip(keys, replies, strict=True)]

    def _sqlite_target(self) -> tuple[Path, dict[str, str]]:
        found = sqlite_file(self.store)
        assert found is not None
        config = self.store.config
        tables = {v: compute_table_id(config.project, self.store.get_feature_view(v),
                                      config.registry.enable_online_feature_view_versioning)
                  for v in self.views}
        return found[0], tables

    def _take_sqlite(self) -> None:
        path, tables = self._sqlite_target()
        keys = [_entity_key(self.store, i, self.join_key) for i in self.entity_ids]
        marks = ",".join("?" * len(keys))
        with closing(sqlite3.connect(path)) as conn:
            existing = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            self._sqlite = {
                table: conn.execute(f'SELECT * FROM "{table}" WHERE entity_key IN ({marks})',
                                    keys).fetchall() if table in existing else []
                for table in tables.values()}

    def restore(self) -> None:
        """Write the snapshot back: fields absent then are deleted, the others put back."""
        with redis_errors(self.store):
            if self.store.config.online_store.type == "sqlite":
                path, tables = self._sqlite_target()
                keys = [_entity_key(self.store, i, self.join_key) for i in self.entity_ids]
                marks = ",".join("?" * len(keys))
                with closing(sqlite3.connect(path)) as conn, conn:
                    for table in tables.values():
                        conn.execute(f'DELETE FROM "{table}" WHERE entity_key IN ({marks})', keys)
                        rows = self._sqlite.get(table, [])
                        if rows:
                            conn.executemany(f'INSERT INTO "{table}" VALUES '
                                             f'({",".join("?" * len(rows[0]))})', rows)
                return
            client = self._redis_client()
            with client.pipeline(transaction=True) as pipe:
                for key, fields in self._redis:
                    absent = [f for f, v in fields.items() if v is None]
                    present = {f: v for f, v in fields.items() if v is not None}
                    if absent:
                        pipe.hdel(key, *absent)
                    if present:
                        pipe.hset(key, mapping=present)
                pipe.execute()


def online_stats_known(store: FeatureStore, item_ids: list[int]) -> set[int]:
    """Those of ``item_ids`` that have an item_stats row online."""
    if not item_ids:
        return set()
    with redis_errors(store):
        rows = store.get_online_features(features=["item_stats:pv"],
                                         entity_rows=[{ITEM_KEY: int(i)} for i in item_ids]
                                         ).to_dict()
    return {int(i) for i, pv in zip(rows[ITEM_KEY], rows["pv"], strict=True) if pv is not None}


def push_online(store: FeatureStore, view: str, table: pa.Table) -> None:
    """``FeatureStore.push`` of ``table`` (the view's schema) to the view's push source."""
    if table.num_rows == 0:
        return
    frame: pd.DataFrame = table.to_pandas()
    with redis_errors(store):
        store.push(PUSH_SOURCES[view], frame, to=PushMode.ONLINE)
