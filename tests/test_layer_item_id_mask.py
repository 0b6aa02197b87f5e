"""ItemIdMask: unseen item ids read the shared "unknown" row; id dropout in training only."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tf_ranker.layers import ItemIdMask


def _mask(num_items: int = 6, dropout: float = 0.0, known: list[int] | None = None) -> ItemIdMask:
    layer = ItemIdMask(num_items, dropout=dropout, seed=3)
    layer.build((None,))
    if known is not None:
        layer.set_known(np.array(known))
    return layer


def test_every_id_is_known_until_set_known() -> None:
    ids = np.array([[0, 1, 5, 6, -2]])
    # 6 and -2 are outside [0, 6): row 0; the others keep their rows
    np.testing.assert_array_equal(np.asarray(_mask()(ids)), [[0, 1, 5, 0, 0]])


def test_ids_the_training_split_never_read_become_unknown() -> None:
    layer = _mask(known=[2, 4, 4, 0, 9])  # 0 (padding) and 9 (out of range) are ignored
    np.testing.assert_array_equal(np.asarray(layer(np.array([1, 2, 3, 4, 5, 0]))),
                                  [0, 2, 0, 4, 0, 0])
    np.testing.assert_array_equal(np.asarray(layer.known), [0, 0, 1, 0, 1, 0])


def test_dropout_only_in_training_at_its_rate() -> None:
    layer = _mask(num_items=3, dropout=0.25)
    ids = np.full((40_000,), 2)
    np.testing.assert_array_equal(np.asarray(layer(ids)), ids)  # inference: untouched
    dropped = float(np.mean(np.asarray(layer(ids, training=True)) == 0))
    assert abs(dropped - 0.25) < 0.01  # binomial sd 0.002
    # training never revives an unknown id
    layer.set_known(np.array([1]))
    assert not np.asarray(layer(ids, training=True)).any()


def test_validation_config_and_saved_known_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dropout"):
        ItemIdMask(4, dropout=1.0)
    with pytest.raises(ValueError, match="num_items"):
        ItemIdMask(0)
    layer = _mask(known=[1, 3])
    clone = ItemIdMask.from_config(layer.get_config())
    assert (clone.num_items, clone.dropout, clone.seed) == (6, 0.0, 3)
    inputs = keras.Input((2,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(loaded(np.array([[1, 2], [3, 4]]))), [[1, 0], [3, 0]])
