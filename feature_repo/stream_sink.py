"""The streaming job's sinks: item_stats rows and user rows into the online store by Feast push.

``spark_jobs/item_stats_stream.py`` hands each micro-batch's changed rows (schema ITEM_STATS,
each the batch job's row as of the stream's snapshot, timestamp included) to
:func:`item_stats_sink`, which pushes them to ``item_stats_push`` (``PushMode.ONLINE``). The
apps join the two (``saviorrec stream item-stats``): a stage never imports another.

Overwrite, always. A late event corrects its item's row without changing the row's timestamp
(the batch job would stamp it the same), and a restarted micro-batch pushes the same rows
again. Feast's Redis store keeps a row only if it is strictly newer than the stored one, which
would drop the correction; this sink's store sets the Redis store's ``skip_dedup`` (one writer
owns item_stats online while the stream runs). Feast's sqlite store always overwrites.

User rows (SEQUENCES, the batch job's serving row over the events seen) go through
:func:`user_rows_sink` to ``user_sequence_push``, with the same store: a repeated micro-batch or
a late event rewrites a row whose timestamp is not newer.

:func:`read_online_item_stats` and :func:`read_online_user_rows` read the rows back with their
timestamps (the equality checks).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from feast import FeatureStore, RepoConfig
from feast.data_source import PushMode
from feast.errors import DataSourceObjectNotFoundException

from feature_repo.definitions import ITEM_KEY, ITEM_STATS_PUSH, USER_KEY, USER_SEQUENCE_PUSH
from feature_repo.fields import TIMESTAMP_COLUMN, feature_names
from feature_repo.online import redis_errors
from feature_repo.profiles import repo_dir, store_settings
from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.schema import ITEM_STATS, SEQUENCES, Table

ITEM_STATS_VIEW = "item_stats"
USER_SEQUENCE_VIEW = "user_sequence"


def sink_store(cfg: Config) -> FeatureStore:
    """The run's store (``store.get_store``), writing Redis rows whatever their timestamp."""
    settings = store_settings(cfg)
    if settings["online_store"].get("type") == "redis":
        settings["online_store"]["skip_dedup"] = True
    Lake.from_config(cfg).feast_data.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=RepoConfig(repo_path=repo_dir(cfg), **settings))


def _push(store: FeatureStore, rows: pd.DataFrame, schema: Table, source: str) -> None:
    """Push ``schema``'s columns of ``rows`` online through the push source ``source``; a Redis
    outage fails naming host:port only."""
    if rows.empty:
        return
    frame = rows[schema.names].copy()
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    with redis_errors(store):
        store.push(source, frame, to=PushMode.ONLINE)


def push_item_stats(store: FeatureStore, rows: pd.DataFrame) -> None:
    """Push ITEM_STATS rows online."""
    _push(store, rows, ITEM_STATS, ITEM_STATS_PUSH)


def item_stats_sink(cfg: Config) -> Callable[[pd.DataFrame], None]:
    """The sink the streaming job calls with each micro-batch's changed rows."""
    store = sink_store(cfg)
    return lambda rows: push_item_stats(store, rows)


def push_user_rows(store: FeatureStore, rows: pd.DataFrame) -> None:
    """Push SEQUENCES rows online."""
    _push(store, rows, SEQUENCES, USER_SEQUENCE_PUSH)


def user_rows_sink(cfg: Config) -> Callable[[pd.DataFrame], None]:
    """The sink the streaming job calls with each micro-batch's user rows. A registry applied
    before the view had its push source is refused at once, naming the fix (not at the first
    push, after the batch's state is written)."""
    store = sink_store(cfg)
    try:
        store.get_data_source(USER_SEQUENCE_PUSH)
    except DataSourceObjectNotFoundException:
        raise RuntimeError(
            f"the run's Feast registry ({store.config.registry.path}) has no push source "
            f"{USER_SEQUENCE_PUSH!r}: it was applied before the stream kept user rows; run "
            "`saviorrec features apply --config C` first") from None
    return lambda rows: push_user_rows(store, rows)


def _read_online(store: FeatureStore, view: str, schema: Table, key: str,
                 ids: list[int]) -> pd.DataFrame:
    """The online rows of ``view`` for ``ids`` (``schema``'s columns, its timestamp included, list
    columns as lists of ints); entities without a row are left out."""
    names = feature_names(schema, keys=(key,))
    if not ids:
        return pd.DataFrame(columns=schema.names)
    present = next(c.name for c in schema.columns  # a missing row reads as null there
                   if c.name in names and not c.dtype.startswith("list"))
    with redis_errors(store):
        response = store.get_online_features(
            features=[f"{view}:{n}" for n in names],
            entity_rows=[{key: int(i)} for i in ids],
        )
    frame = response.to_df()
    # to_df(include_event_timestamps=True) drops the fraction of a second, which Redis keeps
    # (user rows are stamped 1 s after an event's exact time): read the protobuf's. Feast's
    # sqlite store itself writes whole seconds.
    results = dict(zip(response.proto.metadata.feature_names.val, response.proto.results,
                       strict=True))
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(
        [t.seconds * 10**9 + t.nanos for t in results[present].event_timestamps], unit="ns",
        utc=True)
    frame = frame[frame[present].notna()]
    out = pd.DataFrame({key: frame[key].astype("int64"),
                        TIMESTAMP_COLUMN: frame[TIMESTAMP_COLUMN]})
    for column in schema.columns:
        if column.name not in names:
            continue
        if column.dtype.startswith("list"):
            out[column.name] = [[int(i) for i in v] for v in frame[column.name]]
        else:
            out[column.name] = frame[column.name].astype(
                "int64" if column.dtype == "int64" else "float32")
    return out.reset_index(drop=True)


def read_online_user_rows(store: FeatureStore, user_ids: list[int]) -> pd.DataFrame:
    """The online user_sequence rows of ``user_ids`` (SEQUENCES columns, ``seq_item_ids`` as
    lists); users without one are left out."""
    return _read_online(store, USER_SEQUENCE_VIEW, SEQUENCES, USER_KEY, user_ids)


def read_online_item_stats(store: FeatureStore, item_ids: list[int]) -> pd.DataFrame:
    """The online item_stats rows of ``item_ids`` (ITEM_STATS columns); items without one are
    left out."""
    return _read_online(store, ITEM_STATS_VIEW, ITEM_STATS, ITEM_KEY, item_ids)
