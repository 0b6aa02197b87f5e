"""keras.utils.PyDataset over :class:`tf_ranker.data.Samples` (numpy batches, any backend)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_ranker.data import ItemLookup, Samples, make_inputs


class RankerBatches(keras.utils.PyDataset):
    """Batches of (inputs, labels [B, 1] float32); reshuffled each epoch when ``shuffle``.

    The last batch may be smaller. The permutation comes from ``seed`` and the epoch number,
    so a run is reproducible.
    """

    def __init__(self, samples: Samples, items: ItemLookup, *, batch_size: int,
                 shuffle: bool = False, seed: int = 0, use_base_score: bool = False,
                 with_labels: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.samples, self.items = samples, items
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.use_base_score, self.with_labels = use_base_score, with_labels
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
        inputs = make_inputs(self.samples, self.items, rows, self.use_base_score)
        if not self.with_labels:
            return (inputs,)
        return inputs, self.samples.label[rows].astype("float32").reshape(-1, 1)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
