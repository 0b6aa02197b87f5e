"""keras.utils.PyDataset over :class:`tf_ranker.data.Samples` (numpy batches, any backend)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_ranker.data import ItemLookup, Samples, make_inputs
from tf_ranker.packed import FLOATS, INTS, PackLayout


class RankerBatches(keras.utils.PyDataset):
    """Batches of (inputs, labels [B, 1] float32); reshuffled each epoch when ``shuffle``.

    The last batch may be smaller, unless ``pad_last``: then it is filled up to ``batch_size``
    with rows repeated from the start of the epoch's order, and every batch carries sample
    weights [B] float32 (1 for real rows, 0 for the filling), so all batches have one shape that
    a data-parallel device mesh splits evenly. Under a loss reduced by the sum of the sample
    weights (``mean_with_sample_weight``) and a weighted metric (AUC), the padded batch gives
    the loss, gradients and metric values of the short one. Without labels, ``pad_last`` pads
    the inputs alone: the caller keeps the first ``len(samples)`` predictions.

    With ``gather_items=False`` the batches carry item ids only, for a model that gathers item
    embeddings and semantic ids itself (tf_ranker.item_tables.ItemTableRanker); with ``packed``
    as well, those ids and statistics come as two matrices (tf_ranker.packed), packed once here
    and unpacked by that model on the device. Extra keyword
    arguments go to ``keras.utils.PyDataset`` (``workers``: threads building batches ahead).

    The permutation comes from ``seed`` and the epoch number, so a run is reproducible.
    """

    def __init__(self, samples: Samples, items: ItemLookup, *, batch_size: int,
                 shuffle: bool = False, seed: int = 0, use_base_score: bool = False,
                 with_labels: bool = True, pad_last: bool = False, gather_items: bool = True,
                 packed: PackLayout | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.samples, self.items = samples, items
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.use_base_score, self.with_labels = use_base_score, with_labels
        self.pad_last, self.gather_items = pad_last, gather_items
        if packed is not None and gather_items:
            raise ValueError("packed batches carry ids only: pass gather_items=False")
        if packed is not None and packed.base_score != use_base_score:
            raise ValueError(f"packed layout base_score={packed.base_score}, batches "
                             f"use_base_score={use_base_score}")
        self.packed = packed.pack(samples) if packed is not None else None
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        n = len(self.samples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __len__(self) -> int:
        return (len(self.samples) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> Any:
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        real = len(rows)
        if self.pad_last and real < self.batch_size:
            filling = np.resize(self.order, self.batch_size - real)  # wraps when n < batch_size
            rows = np.concatenate([rows, filling])
        if self.packed is not None:
            floats, ints = self.packed
            inputs = {FLOATS: np.take(floats, rows, axis=0), INTS: np.take(ints, rows, axis=0)}
        else:
            inputs = make_inputs(self.samples, self.items, rows, self.use_base_score,
                                 self.gather_items)
        if not self.with_labels:
            return (inputs,)
        labels = self.samples.label[rows].astype("float32").reshape(-1, 1)
        if not self.pad_last:
            return inputs, labels
        weights = (np.arange(len(rows)) < real).astype("float32")
        return inputs, labels, weights

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
