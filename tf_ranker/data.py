"""The ranker's training data in numpy: samples of one split plus the static item table.

Reads TRAINING_SAMPLES / TRAINING_STATS / TRAINING_ITEMS parquet with pyarrow (no TensorFlow:
the same code feeds JAX on a GPU host). Embeddings and semantic ids are joined at batch time by
indexing an item lookup table whose row i is item i, for the candidate and every sequence
position at once (vectorised numpy, no Python loop per sample); the sequence positions'
statistics likewise from the statistics table by each position's ``seq_stats_row``, so a split
in memory holds 4 bytes per position for them, not 7 numbers (saviorrec.training_stats).

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

from saviorrec.lake import read_table, training_stats_beside
from saviorrec.ranker_inputs import (
    BASE_SCORE,
    BY_NAME,
    CANDIDATE,
    ITEM,
    ITEM_ID,
    ITEM_PV_BUCKET,
    ITEM_STATS,
    SEQ_ITEM_IDS,
    SEQ_PV_BUCKET,
    SEQ_STATS,
    STATS_ROW,
    USER_ID,
    USER_STATS,
    inputs,
)
from saviorrec.schema import (
    ITEM_STAT_DEFAULTS,
    ITEM_STAT_NUMERIC,
    SEQ_STATS_ROW,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    TRAINING_STATS,
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
class StatsLookup:
    """Row r = TRAINING_STATS row r (row 0: the defaults): what seq_stats_row points at."""

    stats: np.ndarray  # float32 [R, C] in ITEM_STAT_NUMERIC order
    pv_bucket: np.ndarray  # int64 [R]

    @property
    def num_rows(self) -> int:
        return int(self.pv_bucket.shape[0])

    def column(self, feature: str) -> np.ndarray:
        """The table of a per-position feature of source STATS_ROW: stats or pv_bucket."""
        return {"stats": self.stats, "pv_bucket": self.pv_bucket}[feature]

    @classmethod
    def dense(cls, seq_stats: np.ndarray, seq_pv_bucket: np.ndarray) -> tuple[StatsLookup, np.ndarray]:
        """(a table with one row per position, the rows [n, S]) of per-position statistics
        given in full (tests, benchmarks and synthetic batches); row 0 stays the defaults."""
        n, s, c = seq_stats.shape
        defaults = np.array([ITEM_STAT_DEFAULTS[k] for k in ITEM_STAT_NUMERIC], np.float32)
        stats = np.concatenate([defaults[None], seq_stats.reshape(n * s, c)]).astype(np.float32)
        buckets = np.concatenate([[ITEM_STAT_DEFAULTS["pv_bucket"]],
                                  seq_pv_bucket.reshape(n * s)]).astype(np.int64)
        rows = np.arange(1, n * s + 1, dtype=np.int64).reshape(n, s)
        if n * s + 1 > np.iinfo(np.int32).max:
            raise ValueError(f"{n * s} positions do not fit int32 rows")
        return cls(stats, buckets), rows.astype(np.int32)


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
    seq_stats_row: np.ndarray  # int32 [n, S]: rows of ``stats_table``
    stats_table: StatsLookup
    base_score: np.ndarray | None = None  # float32 [n], when the table has a base_score column

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def seq_stats(self) -> np.ndarray:
        """float32 [n, S, C]: every position's statistics, gathered (all rows at once)."""
        return self.stats_table.stats[self.seq_stats_row]

    @property
    def seq_pv_bucket(self) -> np.ndarray:
        """int64 [n, S], gathered like seq_stats."""
        return self.stats_table.pv_bucket[self.seq_stats_row]

    def input(self, name: str) -> np.ndarray | None:
        """The ranker input ``name`` (saviorrec.ranker_inputs, source SAMPLE or STATS_ROW) of
        every row; ``seq_stats_row`` too (what the model gathers STATS_ROW inputs by)."""
        if name in (SEQ_STATS, SEQ_PV_BUCKET):  # gathered for every row: only when asked
            return self.seq_stats if name == SEQ_STATS else self.seq_pv_bucket
        return {USER_ID: self.user_id, USER_STATS: self.user_stats, ITEM_ID: self.item_id,
                ITEM_STATS: self.stats, ITEM_PV_BUCKET: self.pv_bucket,
                SEQ_ITEM_IDS: self.seq_item_ids, SEQ_STATS_ROW: self.seq_stats_row,
                BASE_SCORE: self.base_score}[name]

    def rows_of(self, name: str, rows: np.ndarray | slice) -> np.ndarray | None:
        """``input(name)[rows]``, gathering STATS_ROW inputs for those rows only."""
        spec = BY_NAME.get(name)
        if spec is not None and spec.source == STATS_ROW:
            return self.stats_table.column(spec.feature)[self.seq_stats_row[rows]]
        column = self.input(name)
        return None if column is None else column[rows]


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


def load_stats(path: Path) -> StatsLookup:
    table = read_table(path, TRAINING_STATS)
    if not table.num_rows or table["item_id"][0].as_py() != 0:
        raise ValueError(f"{path}: row 0 must be the defaults row (item_id 0), found "
                         f"{table['item_id'][0].as_py() if table.num_rows else 'no row'}")
    stats = np.stack([table[n].to_numpy().astype("float32", copy=False)
                      for n in ITEM_STAT_NUMERIC], axis=-1)
    return StatsLookup(stats, table["pv_bucket"].to_numpy().astype("int64", copy=False))


def load_samples(path: Path, stats: StatsLookup | None = None) -> Samples:
    """The split at ``path`` with its training set's statistics table (``stats``, else read
    from beside the split: saviorrec.lake.training_stats_beside)."""
    table = read_table(path, TRAINING_SAMPLES)
    if stats is None:
        stats = load_stats(training_stats_beside(Path(path)))

    def col(name: str, dtype: str) -> np.ndarray:
        return table[name].to_numpy().astype(dtype, copy=False)

    seq_rows = fixed_lists(table[SEQ_STATS_ROW], "int32")
    if seq_rows.size and (seq_rows.min() < 0 or seq_rows.max() >= stats.num_rows):
        raise ValueError(f"{path}: {SEQ_STATS_ROW} up to {seq_rows.max()} but the statistics "
                         f"table has {stats.num_rows} rows (built by another training set?)")
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
        seq_stats_row=seq_rows,
        stats_table=stats,
        base_score=col(BASE_SCORE, "float32") if has_base else None,
    )


def make_inputs(samples: Samples, items: ItemLookup, rows: np.ndarray | slice,
                use_base_score: bool = False, gather_items: bool = True) -> dict[str, np.ndarray]:
    """Model inputs of the selected sample rows; item features (source ITEM) gathered from the
    lookup and sequence statistics (source STATS_ROW) from the statistics table, unless
    ``gather_items=False``: then the batch carries seq_stats_row instead and the model gathers
    both on the device (tf_ranker.item_tables)."""
    out: dict[str, np.ndarray] = {}
    item_rows: dict[str, np.ndarray] = {}
    for spec in inputs(use_base_score):
        if spec.source == STATS_ROW and not gather_items:
            out[SEQ_STATS_ROW] = samples.seq_stats_row[rows]
        elif spec.source != ITEM:
            column = samples.rows_of(spec.name, rows)
            if column is None:
                raise ValueError(f"the model reads {spec.name!r} but the training set has no "
                                 "such column")
            out[spec.name] = column
        elif gather_items:
            ids = out[ITEM_ID if spec.side == CANDIDATE else SEQ_ITEM_IDS]
            if spec.side not in item_rows:
                # Ids beyond the lookup (never in the item table) read row 0: zeros, like padding.
                item_rows[spec.side] = np.where(ids < items.num_rows, ids, 0)
            out[spec.name] = items.column(spec.feature)[item_rows[spec.side]]
    return out
