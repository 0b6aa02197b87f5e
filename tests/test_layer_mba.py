"""ModalBehaviorAlignment (eq. 6-9): identity at init, hand-computed lookups, training."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tf_ranker.layers import ModalBehaviorAlignment

# L = 2 levels, K = 3 codes, d_mba = 2; embedding width d = 2.
CODEBOOK = np.array([[[1, 1], [3, 0], [0, 2]],
                     [[0, 1], [2, 2], [0, 4]]], "float32")
FUSION = [np.array([[1, 0], [0, 1], [1, 0], [0, 1]], "float32"), np.zeros(2, "float32")]


def mba(skip: bool = True, eps: float = 1e-12) -> ModalBehaviorAlignment:
    layer = ModalBehaviorAlignment(levels=2, codebook_size=3, codebook_dim=2, skip=skip,
                                   norm_epsilon=eps)
    layer.build((None, 2), (None, 3))
    return layer


def test_zero_codebook_starts_as_identity_on_z() -> None:
    layer = mba(eps=1e-2)
    assert [tuple(w.shape) for w in layer.weights] == [(2, 3, 2), (4, 2), (2,)]
    assert not np.asarray(layer.codebook).any()
    z = np.random.default_rng(0).standard_normal((4, 5, 2)).astype("float32")
    ids = np.random.default_rng(1).integers(0, 3, (4, 5, 3))
    np.testing.assert_array_equal(np.asarray(layer(z, ids)), z)


def test_lookup_concat_normalise_fuse_by_hand() -> None:
    layer = mba()
    layer.set_codebook(CODEBOOK)
    layer.fusion.set_weights(FUSION)
    # codes [1, 2] (third column, the disambiguation index 7, is ignored):
    # v = [C0[1], C1[2]] = [3, 0, 0, 4] -> /5 -> [0.6, 0, 0, 0.8] -> fusion -> [0.6, 0.8].
    # codes [0, 1]: [1, 1, 2, 2] -> /sqrt(10) -> fusion [3, 3] / sqrt(10) = 0.948683 each.
    z = np.array([[1, 1], [0, -1]], "float32")
    ids = np.array([[1, 2, 7], [0, 1, 0]])
    np.testing.assert_allclose(np.asarray(layer(z, ids)), [[1.6, 1.8], [0.948683, -0.051317]],
                               atol=1e-5)
    no_skip = mba(skip=False)
    no_skip.set_codebook(CODEBOOK)
    no_skip.fusion.set_weights(FUSION)
    np.testing.assert_allclose(np.asarray(no_skip(z, ids)), [[0.6, 0.8], [0.948683, 0.948683]],
                               atol=1e-5)


def test_norm_epsilon_floor_by_hand() -> None:
    layer = mba(eps=0.75)
    layer.set_codebook(np.full((2, 3, 2), 0.5, "float32"))
    layer.fusion.set_weights(FUSION)
    # v = [.5, .5, .5, .5], |v|^2 = 1 -> v / sqrt(1.75); fused = 2 * 0.5 / 1.322876 = 0.755929.
    out = layer(np.zeros((1, 2), "float32"), np.array([[0, 0, 0]]))
    np.testing.assert_allclose(np.asarray(out), [[0.755929, 0.755929]], atol=1e-5)


def test_zero_codebook_learns_only_the_codes_it_saw() -> None:
    z_in, ids_in = keras.Input((2,)), keras.Input((3,), dtype="int64")
    layer = ModalBehaviorAlignment(levels=2, codebook_size=3, codebook_dim=2)
    model = keras.Model([z_in, ids_in], layer(z_in, ids_in))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    z = np.ones((2, 2), "float32")
    ids = np.array([[1, 2, 0], [1, 0, 0]])
    model.train_on_batch([z, ids], np.zeros((2, 2), "float32"))
    codebook = np.asarray(layer.codebook)
    used = {(0, 1), (1, 2), (1, 0)}
    for lvl in range(2):
        for code in range(3):
            assert np.isfinite(codebook[lvl, code]).all()
            assert bool(np.abs(codebook[lvl, code]).sum() > 0) == ((lvl, code) in used)


def test_out_of_range_codes_clip_and_float32_under_mixed_precision() -> None:
    layer = mba()
    layer.set_codebook(CODEBOOK)
    z = np.zeros((1, 2), "float16")
    assert np.asarray(layer(z, np.array([[5, -1, 0]]))).dtype == np.float32
    np.testing.assert_allclose(np.asarray(layer(z, np.array([[5, -1, 0]]))),
                               np.asarray(layer(z, np.array([[2, 0, 0]]))))


def test_validation_and_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codebook_size"):
        ModalBehaviorAlignment(levels=2, codebook_size=0)
    with pytest.raises(ValueError, match="norm_epsilon"):
        ModalBehaviorAlignment(levels=2, codebook_size=3, norm_epsilon=0.0)
    with pytest.raises(ValueError, match="codebook shape"):
        mba().set_codebook(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="levels=2"):
        ModalBehaviorAlignment(levels=2, codebook_size=3).build((None, 2), (None, 1))
    clone = ModalBehaviorAlignment.from_config(mba(skip=False).get_config())
    assert (clone.levels, clone.codebook_size, clone.skip, clone.dtype) == (2, 3, False, "float32")


def test_keras_file_round_trip(tmp_path: Path) -> None:
    z_in, ids_in = keras.Input((2,)), keras.Input((3,), dtype="int64")
    layer = ModalBehaviorAlignment(levels=2, codebook_size=3, codebook_dim=2, skip=False)
    model = keras.Model([z_in, ids_in], layer(z_in, ids_in))
    layer.set_codebook(CODEBOOK)
    data = [np.ones((2, 2), "float32"), np.array([[1, 2, 0], [0, 0, 0]])]
    model.save(tmp_path / "mba.keras")
    loaded = keras.saving.load_model(tmp_path / "mba.keras")
    np.testing.assert_allclose(np.asarray(loaded(data)), np.asarray(model(data)), atol=1e-6)
