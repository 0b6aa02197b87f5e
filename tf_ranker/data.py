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
from saviorrec.ranker_inputs import (
    BASE_SCORE,
    CANDIDATE,
    ITEM,
    ITEM_ID,
    ITEM_PV_BUCKET,
    ITEM_STATS,
    SEQ_ITEM_IDS,
    SEQ_PV_BUCKET,
    SEQ_STATS,
    USER_ID,
    USER_STATS,
    inputs,
)
from saviorrec.schema import (
    ITEM_STAT_NUMERIC,
    SEQ_STAT_PREFIX,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    USER_STAT_NUMERIC,
)


def fixed_lists(column: pa.ChunkedArray, dtype: str) -> np.ndarray:
    """A list column whose rows all have the same length -> numpy [n, length] of ``dtype``
    (embeddings, semantic ids, sequences); rows of other lengths are an error."""
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

    def column(self, feature: str) -> np.ndarray:
        """The table of a per-item feature of source ITEM: embedding or semantic_ids."""
        return {"embedding": self.embedding, "semantic_ids": self.semantic_ids}[feature]


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

    def input(self, name: str) -> np.ndarray | None:
        """The ranker input ``name`` (saviorrec.ranker_inputs, source SAMPLE) of every row."""
        return {USER_ID: self.user_id, USER_STATS: self.user_stats, ITEM_ID: self.item_id,
                ITEM_STATS: self.stats, ITEM_PV_BUCKET: self.pv_bucket,
                SEQ_ITEM_IDS: self.seq_item_ids, SEQ_STATS: self.seq_stats,
                SEQ_PV_BUCKET: self.seq_pv_bucket, BASE_SCORE: self.base_score}[name]


def load_items(path: Path, num_rows: int | None = None) -> ItemLookup:
    table = read_table(path, TRAINING_ITEMS)
    ids = table["item_id"].to_numpy()
    emb = fixed_lists(table["embedding"], "float32")
    sids = fixed_lists(table["semantic_ids"], "int64")
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

    seq = [fixed_lists(table[SEQ_STAT_PREFIX + n], "float32") for n in ITEM_STAT_NUMERIC]
    has_base = BASE_SCORE in table.column_names
    return Samples(
        user_id=col("user_id", "int64"),
        user_stats=np.stack([col(n, "float32") for n in USER_STAT_NUMERIC], axis=-1),
        item_id=col("item_id", "int64"),
        label=col("label", "int64"),
        eval_pv_bucket=col("eval_pv_bucket", "int64"),
        stats=np.stack([col(n, "float32") for n in ITEM_STAT_NUMERIC], axis=-1),
        pv_bucket=col("pv_bucket", "int64"),
        seq_item_ids=fixed_lists(table["seq_item_ids"], "int64"),
        seq_stats=np.stack(seq, axis=-1),
        seq_pv_bucket=fixed_lists(table[SEQ_STAT_PREFIX + "pv_bucket"], "int64"),
        base_score=col(BASE_SCORE, "float32") if has_base else None,
    )


def make_inputs(samples: Samples, items: ItemLookup, rows: np.ndarray | slice,
                use_base_score: bool = False, gather_items: bool = True) -> dict[str, np.ndarray]:
    """Model inputs of the selected sample rows; item features (source ITEM) gathered from the
    lookup, unless ``gather_items=False`` (the model gathers them on the device:
    tf_ranker.item_tables)."""
    out: dict[str, np.ndarray] = {}
    item_rows: dict[str, np.ndarray] = {}
    for spec in inputs(use_base_score):
        if spec.source != ITEM:
            column = samples.input(spec.name)
            if column is None:
                raise ValueError(f"the model reads {spec.name!r} but the training set has no "
                                 "such column")
            out[spec.name] = column[rows]
        elif gather_items:
            ids = out[ITEM_ID if spec.side == CANDIDATE else SEQ_ITEM_IDS]
            if spec.side not in item_rows:
                # Ids beyond the lookup (never in the item table) read row 0: zeros, like padding.
                item_rows[spec.side] = np.where(ids < items.num_rows, ids, 0)
            out[spec.name] = items.column(spec.feature)[item_rows[spec.side]]
    return out
