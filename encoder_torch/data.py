"""Reading the lake tables the encoder needs: items, co-click pairs, next-click evaluation pairs."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from saviorrec.lake import Lake, read_table
from saviorrec.schema import COCLICK, ITEMS, SAMPLES

log = logging.getLogger(__name__)


def read_items(lake: Lake) -> pd.DataFrame:
    """Raw items sorted by item_id (row i of every feature matrix is item i of this frame)."""
    items = read_table(lake.items, ITEMS).to_pandas()
    if items["item_id"].duplicated().any():
        raise ValueError(f"{lake.items}: duplicate item_id, e.g. "
                         f"{int(items.loc[items['item_id'].duplicated(), 'item_id'].iloc[0])}")
    return items.sort_values("item_id", kind="stable").reset_index(drop=True)


def rows_of(item_ids: np.ndarray, wanted: np.ndarray, *, what: str) -> np.ndarray:
    """Row index in ``item_ids`` (sorted) of each id in ``wanted``; unknown ids are an error."""
    rows = np.searchsorted(item_ids, wanted)
    rows = np.clip(rows, 0, len(item_ids) - 1)
    unknown = item_ids[rows] != wanted
    if unknown.any():
        raise ValueError(f"{what}: {int(unknown.sum())} ids not in items.parquet, "
                         f"e.g. {int(wanted[unknown][0])}")
    return rows


def coclick_pairs(lake: Lake, item_ids: np.ndarray) -> np.ndarray:
    """Unordered co-click pairs as item rows [P, 2] (a < b), each pair once (the Spark table is
    symmetric: (a, b) and (b, a) both appear); the InfoNCE is symmetric, so no pair is lost."""
    table = read_table(lake.spark("coclick"), COCLICK).select(["item_id", "partner_id"]).to_pandas()
    a = rows_of(item_ids, table["item_id"].to_numpy(np.int64), what="coclick.item_id")
    b = rows_of(item_ids, table["partner_id"].to_numpy(np.int64), what="coclick.partner_id")
    if (a == b).any():
        raise ValueError(f"coclick: {int((a == b).sum())} rows pair an item with itself")
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    log.info("coclick: %d rows -> %d unordered pairs", len(table), len(pairs))
    return pairs


def next_click_pairs(lake: Lake, *, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(query item ids, next clicked item ids): consecutive clicks of each user inside ``split``,
    ordered by time (ties by item_id). ARCHITECTURE.md's i2i Hit@K protocol."""
    samples = read_table(lake.spark("samples"), SAMPLES).select(
        ["user_id", "item_id", "label", "event_timestamp", "split"]).to_pandas()
    if split not in set(samples["split"].unique()):
        raise ValueError(f"samples has no {split!r} rows (splits: {sorted(samples['split'].unique())})")
    clicks = samples[(samples["split"] == split) & (samples["label"] == 1)]
    clicks = clicks.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable")
    users = clicks["user_id"].to_numpy()
    items = clicks["item_id"].to_numpy(np.int64)
    same_user = users[1:] == users[:-1]
    return items[:-1][same_user], items[1:][same_user]
