"""Training on an accelerator with the item table on the device: ``ItemTableRanker``.

The exported ranker takes item embeddings and semantic ids as inputs: serving reads them from
Feast, so a cold item's features are used as soon as they land in the online store. In training
they come from one static table (``training_items``), and gathering them on the host was the
bottleneck of GPU training: at batch 1024 a host batch took 10 ms to build (13 MB of sequence
embeddings per batch, then copied to the device) against a 1.25 ms device step
(benchmarks/results/ranker_throughput_jax.json, "host_pipeline" and "train_step").

``ItemTableRanker`` holds the table as two non-trainable weights and gathers on the device; the
host sends ids, statistics and PV buckets only (``make_inputs(..., gather_items=False)``). The
sequence positions' statistics likewise: the training set's statistics table (TRAINING_STATS)
is two more weights, and the host sends each position's row (``seq_stats_row``). It wraps the
very ``SaviorRanker`` that is saved and exported, so training and serving share one set of
weights and the serving signature (which takes seq_stats and seq_pv_bucket) is unchanged.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from saviorrec.ranker_inputs import (
    CANDIDATE,
    INPUTS,
    ITEM,
    ITEM_ID,
    SEQ_ITEM_IDS,
    SEQUENCE,
    STATS_ROW,
)
from saviorrec.schema import SEQ_STATS_ROW
from tf_ranker.data import ItemLookup, StatsLookup
from tf_ranker.packed import FLOATS, INTS, PackLayout

__all__ = ["ItemTableRanker"]


class ItemTableRanker(keras.Model):
    """``ranker`` with item embeddings and semantic ids, and the sequence positions' statistics,
    gathered from on-device tables.

    Ids beyond the table read row 0 (zeros, like padding), as ``make_inputs`` does on the host.
    Statistics rows are the training set's own (checked on the host when its splits load).
    With ``packing``, batches may come packed (tf_ranker.packed) and are unpacked here first.
    Not meant to be saved: save ``self.ranker``.
    """

    def __init__(self, ranker: keras.Model, items: ItemLookup, stats: StatsLookup,
                 packing: PackLayout | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ranker, self.packing = ranker, packing
        self.num_rows = int(items.num_rows)
        self.embedding_table = self._constant(items.embedding, "float32", "item_embedding_table")
        self.semantic_table = self._constant(items.semantic_ids, "int32", "item_semantic_id_table")
        self.stats_table = self._constant(stats.stats, "float32", "stats_table")
        self.stats_bucket_table = self._constant(stats.pv_bucket, "int32", "stats_pv_bucket_table")

    def _constant(self, values: Any, dtype: str, name: str) -> Any:
        """A non-trainable weight holding ``values`` (a table the device gathers from)."""
        weight = self.add_weight(shape=values.shape, initializer="zeros", dtype=dtype,
                                 trainable=False, name=name)
        weight.assign(values.astype(dtype))
        return weight

    def _rows(self, ids: Any) -> Any:
        ids = ops.cast(ids, "int32")
        return ops.where(ids < self.num_rows, ids, ops.zeros_like(ids))

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        if FLOATS in inputs:
            if self.packing is None:
                raise ValueError("packed inputs, but this ItemTableRanker has no packing layout")
            inputs = self.packing.unpack(inputs[FLOATS], inputs[INTS])
        rows = {CANDIDATE: self._rows(inputs[ITEM_ID]), SEQUENCE: self._rows(inputs[SEQ_ITEM_IDS])}
        tables = {"embedding": self.embedding_table, "semantic_ids": self.semantic_table,
                  "stats": self.stats_table, "pv_bucket": self.stats_bucket_table}
        full = dict(inputs)
        stats_rows = full.pop(SEQ_STATS_ROW, None)
        for spec in INPUTS:
            if spec.source == ITEM:
                full[spec.name] = ops.take(tables[spec.feature], rows[spec.side], axis=0)
            elif spec.source == STATS_ROW and stats_rows is not None:
                full[spec.name] = ops.take(tables[spec.feature], ops.cast(stats_rows, "int32"),
                                           axis=0)
        return self.ranker(full, training=training)
