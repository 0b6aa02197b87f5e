"""The ranker's training data in numpy: samples of one split plus the static item table.

Reads TRAINING_SAMPLES / TRAINING_ITEMS parquet with pyarrow (no TensorFlow: the same code
feeds JAX on a GPU host). Embeddings and semantic ids are joined at batch time by indexing an
item lookup table whose row i is item i, for the candidate and every sequence position at once
(vectorised numpy, no Python loop per sample).

Statistics are passed as stored: an item without a stats row has pv = 0 and ctr = 0 ("unknown",
ITEM_STAT_DEFAULTS). The model sees pv = 0 and the pv_bucket beside it and learns what that
means, so the serving app needs no extra fill-in rule (it feeds Feast's values unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saviorrec.lake import read_table
from saviorrec.schema import (
    ITEM_STAT_NUMERIC,
    SEQ_STAT_PREFIX,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    USER_STAT_NUMERIC,
)
from tf_ranker.features import BASE_SCORE


def _fixed_lists(column: pa.ChunkedArray, dtype: str) -> np.ndarray:
    """A list column whose rows all have the same length -> numpy [n, length]."""
    n = len(column)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if n and (lengths.min() != lengths.max()):
        raise ValueError(f"list column has rows of lengths {lengths.min()}..{lengths.max()}, "
                         "expected one fixed length")
    width = int(lengths[0]) if n else 0
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(n, width)


@dataclass(frozen=True)
class ItemLookup:
    """Row i = item i; rows of items absent from the table (and row 0, padding) hold zeros."""

    embedding: np.ndarray  # float32 [V, d]
    semantic_ids: np.ndarray  # int64 [V, L + 1]

    @property
    def num_rows(self) -> int:
        return int(self.embedding.shape[0])


@dataclass(frozen=True)
class Samples:
    user_id: np.ndarray  # int64 [n]
    user_stats: np.ndarray  # float32 [n, U] in USER_STAT_NUMERIC order
    item_id: np.ndarray  # int64 [n]
    label: np.ndarray  # int64 [n]
    eval_pv_bucket: np.ndarray  # int64 [n]
    stats: np.ndarray  # float32 [n, C] in ITEM_STAT_NUMERIC order
    pv_bucket: np.ndarray  # int64 [n]
    seq_item_ids: np.ndarray  # int64 [n, S]
    seq_stats: np.ndarray  # float32 [n, S, C]
    seq_pv_bucket: np.ndarray  # int64 [n, S]
    base_score: np.ndarray | None = None  # float32 [n], when the table has a base_score column

    def __len__(self) -> int:
        return int(self.label.shape[0])


def load_items(path: Path, num_rows: int | None = None) -> ItemLookup:
    table = read_table(path, TRAINING_ITEMS)
    ids = table["item_id"].to_numpy()
    emb = _fixed_lists(table["embedding"], "float32")
    sids = _fixed_lists(table["semantic_ids"], "int64")
    if ids.size and ids.min() < 1:
        raise ValueError(f"{path}: item ids must be >= 1 (0 is padding), found {ids.min()}")
    rows = max(int(ids.max(initial=0)) + 1, num_rows or 0)
    embedding = np.zeros((rows, emb.shape[1]), "float32")
    semantic_ids = np.zeros((rows, sids.shape[1]), "int64")
    embedding[ids] = emb
    semantic_ids[ids] = sids
    return ItemLookup(embedding, semantic_ids)


def load_samples(path: Path) -> Samples:
    table = read_table(path, TRAINING_SAMPLES)

    def col(name: str, dtype: str) -> np.ndarray:
        return table[name].to_numpy().astype(dtype, copy=False)

    seq = [_fixed_lists(table[SEQ_STAT_PREFIX + n], "float32") for n in ITEM_STAT_NUMERIC]
    has_base = BASE_SCORE in table.column_names
    return Samples(
        user_id=col("user_id", "int64"),
        user_stats=np.stack([col(n, "float32") for n in USER_STAT_NUMERIC], axis=-1),
        item_id=col("item_id", "int64"),
        label=col("label", "int64"),
        eval_pv_bucket=col("eval_pv_bucket", "int64"),
        stats=np.stack([col(n, "float32") for n in ITEM_STAT_NUMERIC], axis=-1),
        pv_bucket=col("pv_bucket", "int64"),
        seq_item_ids=_fixed_lists(table["seq_item_ids"], "int64"),
        seq_stats=np.stack(seq, axis=-1),
        seq_pv_bucket=_fixed_lists(table[SEQ_STAT_PREFIX + "pv_bucket"], "int64"),
        base_score=col(BASE_SCORE, "float32") if has_base else None,
    )


# The inputs make_inputs gathers from the item table (the rest come from the sample rows).
ITEM_TABLE_INPUTS = ("item_embedding", "item_semantic_ids", "seq_embedding", "seq_semantic_ids")


def make_inputs(samples: Samples, items: ItemLookup, rows: np.ndarray | slice,
                use_base_score: bool = False, gather_items: bool = True) -> dict[str, np.ndarray]:
    """Model inputs of the selected sample rows; item features gathered from the lookup, unless
    ``gather_items=False`` (the model gathers them on the device: tf_ranker.item_tables)."""
    item_id = samples.item_id[rows]
    seq_ids = samples.seq_item_ids[rows]
    out = {
        "user_id": samples.user_id[rows],
        "user_stats": samples.user_stats[rows],
        "item_id": item_id,
        "item_stats": samples.stats[rows],
        "item_pv_bucket": samples.pv_bucket[rows],
        "seq_item_ids": seq_ids,
        "seq_stats": samples.seq_stats[rows],
        "seq_pv_bucket": samples.seq_pv_bucket[rows],
    }
    if gather_items:
        # Ids beyond the lookup (never in the item table) read row 0: zeros, like padding.
        item_row = np.where(item_id < items.num_rows, item_id, 0)
        seq_row = np.where(seq_ids < items.num_rows, seq_ids, 0)
        out["item_embedding"] = items.embedding[item_row]
        out["item_semantic_ids"] = items.semantic_ids[item_row]
        out["seq_embedding"] = items.embedding[seq_row]
        out["seq_semantic_ids"] = items.semantic_ids[seq_row]
    if use_base_score:
        if samples.base_score is None:
            raise ValueError(f"the model reads {BASE_SCORE!r} but the training set has no such column")
        out[BASE_SCORE] = samples.base_score[rows]
    return out
