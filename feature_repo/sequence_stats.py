"""Point-in-time statistics of (item, time) pairs: the costly part of the training set.

A training set of S samples with sequences of N items asks for S x N item statistics, each as
of its sample's time. Pairs are deduplicated first (samples of one user at one time share their
sequence). Two ways to join them, both with Feast's semantics (latest row stamped <= t and
within the view's TTL, else null):

* ``duckdb_asof``: a duckdb ASOF LEFT JOIN directly on the item_stats source of the view.
* ``feast``: ``get_historical_features`` of the item_stats view (duckdb or Spark offline store).

Measured on 100k samples x 50 positions = 5.0M distinct pairs, 10k items, 2 shared CPUs
(benchmarks/results/feature_serving.json, "sequence_stats"): ASOF JOIN 6.6 s (760k pairs/s),
get_historical_features (duckdb) 202 s (25k pairs/s): ~30x. Feast's duckdb store builds a
generic point-in-time query through ibis (window over the union of entity and feature rows);
the ASOF join is one sort-merge.

The training set stores, per position, the ROW of its statistics table (saviorrec.training_stats)
rather than the values, and Feast returns values only: so the builder finds rows with
:func:`pair_rows_asof`, and ``feast`` (``feast.sequence_stats_join``) checks them against
:func:`pair_stats_feast` value for value.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureStore

from feature_repo.online import STAT_FEATURES

STAT_REFS = [f"item_stats:{n}" for n in STAT_FEATURES]


def pair_stats_asof(pairs: pa.Table, stats_scan: str, ttl: timedelta) -> pa.Table:
    """(pair_id, item_id, event_timestamp) -> pair_id and the stats, null where no row."""
    con = duckdb.connect()
    con.register("pairs", pairs)
    cols = ", ".join(
        f"CASE WHEN s.event_timestamp >= p.event_timestamp - INTERVAL '{int(ttl.total_seconds())} "
        f"seconds' THEN s.{n} END AS {n}" for n in STAT_FEATURES
    )
    return con.sql(
        f"SELECT p.pair_id, {cols} FROM pairs p "
        f"ASOF LEFT JOIN {stats_scan} s "
        "ON p.item_id = s.item_id AND p.event_timestamp >= s.event_timestamp"
    ).to_arrow_table()


def stats_rows(stats: pa.Table) -> pa.Table:
    """(item_id, event_timestamp, stats_row) of every row of a TRAINING_STATS table but the
    defaults row: what :func:`pair_rows_asof` joins against (built once per training set)."""
    return stats.select(["item_id", "event_timestamp"]).append_column(
        "stats_row", pa.array(np.arange(stats.num_rows, dtype=np.int32))).slice(1)


def pair_rows_asof(pairs: pa.Table, rows: pa.Table, ttl: timedelta) -> pa.Table:
    """(pair_id, item_id, event_timestamp) -> pair_id and the TRAINING_STATS row of the item as
    of that time (``rows``: :func:`stats_rows`), Feast's rule as :func:`pair_stats_asof`; 0, the
    defaults row, where none."""
    con = duckdb.connect()
    con.register("pairs", pairs)
    con.register("stats_rows", rows)
    return con.sql(
        f"SELECT p.pair_id, COALESCE(CASE WHEN s.event_timestamp >= p.event_timestamp - "
        f"INTERVAL '{int(ttl.total_seconds())} seconds' THEN s.stats_row END, 0)::INTEGER "
        "AS stats_row FROM pairs p ASOF LEFT JOIN stats_rows s "
        "ON p.item_id = s.item_id AND p.event_timestamp >= s.event_timestamp"
    ).to_arrow_table()


def pair_stats_feast(pairs: pa.Table, store: FeatureStore) -> pa.Table:
    entity_df = pairs.to_pandas()
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    result = store.get_historical_features(entity_df=entity_df, features=STAT_REFS).to_arrow()
    if result.num_rows != pairs.num_rows:
        raise RuntimeError(
            f"get_historical_features returned {result.num_rows} rows for {pairs.num_rows} pairs"
        )
    return result.select(["pair_id", *STAT_FEATURES])
