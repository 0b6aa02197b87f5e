"""keras.utils.PyDataset over :class:`tf_ranker.data.Samples` (numpy batches, any backend)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    and unpacked by that model on the device. Packed batches are contiguous slices of the
    matrices laid out in the epoch's row order: the rows of the next epoch's order are gathered
    by a background thread while this epoch trains (numpy's ``take`` releases the GIL), so the
    thread that feeds the device does no per-batch gather (a 16384-row batch gathered in that
    thread cost more than two GPUs' step). Memory: up to three copies of the packed split
    (rows as packed, this epoch's order, the next). ``place`` maps every array of a batch
    before it is returned, e.g. :func:`data_placement`'s copy to the devices, so that threads
    building batches ahead (``workers`` > 1) also start the host-to-device copies. Extra keyword
    arguments go to ``keras.utils.PyDataset`` (``workers``: threads building batches ahead).

    The permutation comes from ``seed`` and the epoch number, so a run is reproducible for a
    given number of ``workers``. Keras feeds the epochs differently with one worker and with
    more (keras 3.15: its enqueuer hands the batches read ahead for the model's build to the
    first epoch), so runs with 1 and with 2 workers see the orders in another sequence.
    """

    def __init__(self, samples: Samples, items: ItemLookup, *, batch_size: int,
                 shuffle: bool = False, seed: int = 0, use_base_score: bool = False,
                 with_labels: bool = True, pad_last: bool = False, gather_items: bool = True,
                 packed: PackLayout | None = None,
                 place: Callable[[np.ndarray], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.samples, self.items = samples, items
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.use_base_score, self.with_labels = use_base_score, with_labels
        self.pad_last, self.gather_items, self.place = pad_last, gather_items, place
        if packed is not None and gather_items:
            raise ValueError("packed batches carry ids only: pass gather_items=False")
        if packed is not None and packed.base_score != use_base_score:
            raise ValueError(f"packed layout base_score={packed.base_score}, batches "
                             f"use_base_score={use_base_score}")
        self.epoch = 0
        self.order = self._order()
        # Packed mode: the packed rows (floats, ints, labels), the same arrays in this epoch's
        # order, and the next epoch's (order, arrays) being gathered in the background.
        self.packed: tuple[np.ndarray, ...] | None = None
        self._epoch_rows: tuple[np.ndarray, ...] | None = None
        self._next_epoch: Future[tuple[np.ndarray, tuple[np.ndarray, ...]]] | None = None
        self._gatherer: ThreadPoolExecutor | None = None
        if packed is not None:
            self.packed = (*packed.pack(samples), samples.label.astype("float32").reshape(-1, 1))
            self._epoch_rows = self._rows_in(self.order)
            self._prepare_next_epoch()

    def _order(self, epoch: int | None = None) -> np.ndarray:
        n = len(self.samples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]
                                     ).permutation(n)

    def _rows_in(self, order: np.ndarray) -> tuple[np.ndarray, ...]:
        """The packed arrays in ``order`` (the arrays themselves when unshuffled)."""
        assert self.packed is not None
        if not self.shuffle:
            return self.packed
        return tuple(np.take(array, order, axis=0) for array in self.packed)

    def _prepare_next_epoch(self) -> None:
        """Start gathering the next epoch's rows in a background thread (shuffled only)."""
        if not self.shuffle:
            return
        if self._gatherer is None:
            self._gatherer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker-rows")
        order = self._order(self.epoch + 1)
        self._next_epoch = self._gatherer.submit(lambda: (order, self._rows_in(order)))

    def __len__(self) -> int:
        return (len(self.samples) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> Any:
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.samples))
        real = stop - start
        # Positions in the epoch's order: the batch, then (pad_last) the filling from the start
        # of the order, wrapping when there are fewer rows than a batch.
        filling = None
        if self.pad_last and real < self.batch_size:
            filling = np.resize(np.arange(len(self.samples)), self.batch_size - real)

        def take(array: np.ndarray) -> np.ndarray:
            part = array[start:stop]  # a view, no copy
            return part if filling is None else np.concatenate([part, array[filling]])

        if self._epoch_rows is not None:
            floats, ints, labels = (take(array) for array in self._epoch_rows)
            inputs: dict[str, np.ndarray] = {FLOATS: floats, INTS: ints}
        else:
            rows = take(self.order)
            inputs = make_inputs(self.samples, self.items, rows, self.use_base_score,
                                 self.gather_items)
            labels = self.samples.label[rows].astype("float32").reshape(-1, 1)
        if not self.with_labels:
            batch: tuple[Any, ...] = (inputs,)
        elif not self.pad_last:
            batch = (inputs, labels)
        else:
            batch = (inputs, labels, (np.arange(len(labels)) < real).astype("float32"))
        if self.place is None:
            return batch
        return keras.tree.map_structure(self.place, batch)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        if self._next_epoch is None:
            self.order = self._order()
            return
        self.order, self._epoch_rows = self._next_epoch.result()
        self._prepare_next_epoch()


def data_placement(distribution: Any) -> Callable[[np.ndarray], Any] | None:
    """Under a JAX ``keras.distribution`` (e.g. DataParallel), a function that copies a batch
    array to the devices with the distribution's data layout (split on the batch axis), else
    None. Keras's JAX trainer would make the same copy itself, in the thread that feeds the
    devices and without looking ahead (keras 3.15 ``JAXEpochIterator._get_distributed_iterator``);
    placed by the batch-building threads, it finds the arrays already there and passes them on.
    """
    if distribution is None or keras.backend.backend() != "jax":
        return None
    import jax

    def place(array: np.ndarray) -> Any:
        return jax.device_put(array, distribution.get_data_layout(array.shape).backend_layout)

    return place
