"""ItemIdMask: item ids the ranker never trained on read the shared "unknown" id embedding.

An item id embedding is trained only by the samples that read it. An item without a training
event (every cold item, by definition) keeps its random initial row: noise the model has learned
to trust, since every id it trained on carried signal. This layer maps such ids to row 0, the
one "unknown" row every unseen item shares (the vocabulary of a lookup layer with an
out-of-vocabulary index, e.g. ``keras.layers.IntegerLookup``), and, in training, maps a
``dropout`` fraction of the ids it sees to row 0 as well, so that row is trained, on items whose
statistics and content are known, to stand for "an item we know nothing about by id": the
input dropout of DropoutNet (Volkovs et al., NeurIPS 2017), which trains a recommender for
users and items whose preference input is missing by dropping it at random in training.

The known ids are a non-trainable weight (set from the training split with :meth:`set_known`),
so a saved or exported model applies the same rule at serving time with no side file.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

UNKNOWN_ID = 0  # the row every unseen id reads (also the padding id of behaviour sequences)


@keras.saving.register_keras_serializable(package="saviorrec")
class ItemIdMask(keras.layers.Layer):
    """``call(ids [...] int, training) -> ids [...] int32``: ids outside [0, num_items), ids
    not marked known, and in training a ``dropout`` fraction of the others, become 0."""

    def __init__(self, num_items: int, dropout: float = 0.0, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_items, self.dropout, self.seed = num_items, dropout, seed
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_items": self.num_items, "dropout": self.dropout,
                "seed": self.seed}

    def build(self, input_shape: Any = None) -> None:
        # 1 = the id has its own trained row; every id is known until set_known says otherwise.
        self.known = self.add_weight(shape=(self.num_items,), initializer="ones", dtype="int32",
                                     trainable=False, name="known")
        self.built = True

    def set_known(self, item_ids: np.ndarray) -> None:
        """Only ``item_ids`` (those the training split reads) keep their own rows."""
        ids = np.asarray(item_ids, dtype=np.int64)
        ids = ids[(ids > UNKNOWN_ID) & (ids < self.num_items)]
        known = np.zeros(self.num_items, dtype="int32")
        known[ids] = 1
        self.known.assign(known)

    def call(self, ids: Any, training: bool | None = None) -> Any:
        ids = ops.cast(ids, "int32")
        in_range = ops.logical_and(ids >= 0, ids < self.num_items)
        safe = ops.where(in_range, ids, UNKNOWN_ID)
        keep = ops.logical_and(in_range, ops.take(self.known, safe, axis=0) > 0)
        if training and self.dropout > 0:
            draw = keras.random.uniform(ops.shape(ids), seed=self.seed_generator)
            keep = ops.logical_and(keep, draw >= self.dropout)
        return ops.where(keep, safe, UNKNOWN_ID)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape
