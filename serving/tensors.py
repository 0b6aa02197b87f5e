"""Online features -> the SavedModel's input arrays (saviorrec.ranker_inputs), numpy-vectorised.

The distinct items of a request (candidates and sequence items) become one small table, row k
for the k-th item plus a last row for padding; the candidate and sequence inputs are then plain
fancy-indexing of that table. Padding positions and items without features carry the values the
training set gives them: ``ITEM_STAT_DEFAULTS``, a zero embedding and semantic ids 0. An
unknown user (no row online) has the statistics the training set gives a user's first event:
no earlier events, and the smoothing prior as click rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saviorrec.ranker_inputs import (
    CANDIDATE,
    ITEM_ID,
    SEQ_ITEM_IDS,
    USER_ID,
    USER_STATS,
    RankerInput,
    inputs,
)
from saviorrec.schema import (
    ITEM_STAT_DEFAULTS,
    ITEM_STAT_NUMERIC,
    PADDING_ITEM_ID,
    USER_STAT_NUMERIC,
)


class FeatureShapeError(ValueError):
    """Store features whose shape differs from what the model was exported with."""


@dataclass(frozen=True)
class Layout:
    """What the model expects besides the request: widths and the sequence length S."""

    embedding_dim: int
    semantic_id_width: int
    sequence_length: int
    user_ctr_prior: float  # stats.ctr_prior: the click rate of a user with no earlier event

    def new_user_stats(self) -> np.ndarray:
        """USER_STAT_NUMERIC of a user without history: 0 events, 0 clicks, the prior rate."""
        return np.array([self.user_ctr_prior if n.endswith("ctr") else 0.0
                         for n in USER_STAT_NUMERIC], dtype=np.float32)


def fit_sequence(item_ids: Sequence[int], length: int) -> np.ndarray:
    """The last ``length`` items, left-padded with PADDING_ITEM_ID (the stored layout)."""
    ids = np.asarray(item_ids, dtype=np.int64)[-length:] if length else np.zeros(0, np.int64)
    out = np.full(length, PADDING_ITEM_ID, dtype=np.int64)
    if ids.size:
        out[length - ids.size:] = ids
    return out


def _item_table(items: Mapping[int, Mapping[str, Any]], layout: Layout
                ) -> tuple[dict[int, int], dict[str, np.ndarray]]:
    """Row index of each item and the stacked feature columns; the last row is padding."""
    values = list(items.values())
    index = {item_id: row for row, item_id in enumerate(items)}
    pad_stats = [float(ITEM_STAT_DEFAULTS[n]) for n in ITEM_STAT_NUMERIC]
    stats = np.array([[v[n] for n in ITEM_STAT_NUMERIC] for v in values] + [pad_stats],
                     dtype=np.float32).reshape(-1, len(ITEM_STAT_NUMERIC))
    pv_bucket = np.array([v["pv_bucket"] for v in values] + [ITEM_STAT_DEFAULTS["pv_bucket"]],
                         dtype=np.int64)
    try:
        embedding = np.array([v["embedding"] for v in values] + [[0.0] * layout.embedding_dim],
                             dtype=np.float32)
        semantic_ids = np.array([v["semantic_ids"] for v in values]
                                + [[0] * layout.semantic_id_width], dtype=np.int64)
    except ValueError:  # ragged rows: some item's list has another length
        raise FeatureShapeError(
            f"item features of the online store do not match the model: embedding width "
            f"{layout.embedding_dim} and {layout.semantic_id_width} semantic ids expected"
        ) from None
    return index, {"stats": stats, "pv_bucket": pv_bucket, "embedding": embedding,
                   "semantic_ids": semantic_ids}


def build_inputs(user_id: int, item_ids: Sequence[int], sequence: Sequence[int],
                 items: Mapping[int, Mapping[str, Any]], layout: Layout,
                 user_stats: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The signature's inputs: the user side [1, ...], the candidates [N, ...], the sequence
    [1, S, ...] (every input but base_score, which the online store does not hold).

    ``items`` holds every candidate and sequence item (defaults already filled in by the
    feature reader); ``sequence`` is the user's stored, left-padded sequence ([] if unknown);
    ``user_stats`` the stored USER_STAT_NUMERIC values (None if unknown).
    """
    index, table = _item_table(items, layout)
    pad_row = len(index)
    seq_ids = fit_sequence(sequence, layout.sequence_length)
    cand_rows = np.fromiter((index[int(i)] for i in item_ids), np.int64, len(item_ids))
    seq_rows = np.fromiter((index.get(int(i), pad_row) if i != PADDING_ITEM_ID else pad_row
                            for i in seq_ids), np.int64, seq_ids.size)
    stats = layout.new_user_stats() if user_stats is None else \
        np.asarray(user_stats, dtype=np.float32)
    ids = {USER_ID: np.array([user_id], dtype=np.int64),
           USER_STATS: stats.reshape(1, len(USER_STAT_NUMERIC)),
           ITEM_ID: np.asarray(item_ids, dtype=np.int64),
           SEQ_ITEM_IDS: seq_ids[None, :]}

    def value(spec: RankerInput) -> np.ndarray:
        if spec.name in ids:
            return ids[spec.name]
        if spec.side == CANDIDATE:
            return table[spec.feature][cand_rows]
        return table[spec.feature][seq_rows][None, ...]

    return {spec.name: value(spec).astype(spec.dtype, copy=False) for spec in inputs()}
