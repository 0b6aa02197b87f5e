"""TargetAttention: hand-computed outputs, masking, broadcasting, config and saving."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from tf_ranker.layers import TargetAttention


def reference_attention(q_in: np.ndarray, k_in: np.ndarray, v_in: np.ndarray, mask: np.ndarray,
                        wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, heads: int,
                        softmax: bool = True) -> np.ndarray:
    """Loop-by-loop numpy multi-head attention with a masked softmax over the sequence (or, not
    ``softmax``, the scaled scores as weights: eq. 10 as printed)."""
    b, s = mask.shape
    dk, dv = wq.shape[1] // heads, wv.shape[1] // heads
    out = np.zeros((b, heads * dv))
    for i in range(b):
        q, k, v = q_in[i] @ wq, k_in[i] @ wk, v_in[i] @ wv
        for h in range(heads):
            valid = [j for j in range(s) if mask[i, j]]
            if not valid:
                continue
            logits = [q[h * dk:(h + 1) * dk] @ k[j, h * dk:(h + 1) * dk] / math.sqrt(dk)
                      for j in valid]
            w = np.array(logits)
            if softmax:
                w = np.exp(w - w.max())
                w /= w.sum()
            out[i, h * dv:(h + 1) * dv] = sum(wj * v[j, h * dv:(h + 1) * dv]
                                              for wj, j in zip(w, valid, strict=True))
    return out


def built_layer(heads: int, key_dim: int, value_dim: int, dq: int, dk: int, dv: int,
                seed: int = 0, normalization: str = "softmax"
                ) -> tuple[TargetAttention, list[np.ndarray]]:
    layer = TargetAttention(heads, key_dim, value_dim, normalization)
    layer.build((None, dq), (None, None, dk), (None, None, dv))
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()]
    layer.set_weights(weights)
    return layer, weights


def test_single_head_by_hand() -> None:
    # W = identity: q = [1, 0]; keys [1, 0], [0, 1] and a padded [5, 5].
    # logits = [1, 0] / sqrt(2); w1 = e^0.7071 / (e^0.7071 + 1) = 0.669762; out = [w1, 1 - w1].
    layer = TargetAttention(num_heads=1, key_dim=2)
    layer.build((None, 2), (None, None, 2), (None, None, 2))
    layer.set_weights([np.eye(2, dtype="float32")] * 3)
    keys = np.array([[[1, 0], [0, 1], [5, 5]]], "float32")
    out = layer(np.array([[1, 0]], "float32"), keys, keys, np.array([[True, True, False]]))
    np.testing.assert_allclose(np.asarray(out), [[0.669762, 0.330238]], atol=1e-6)


def test_single_head_without_normalisation_by_hand() -> None:
    # eq. 10 as printed: the same inputs as above, weights = logits = [0.707107, 0] (padding 0).
    layer = TargetAttention(num_heads=1, key_dim=2, normalization="none")
    layer.build((None, 2), (None, None, 2), (None, None, 2))
    layer.set_weights([np.eye(2, dtype="float32")] * 3)
    keys = np.array([[[1, 0], [0, 1], [5, 5]]], "float32")
    out = layer(np.array([[1, 0]], "float32"), keys, keys, np.array([[True, True, False]]))
    np.testing.assert_allclose(np.asarray(out), [[0.707107, 0.0]], atol=1e-6)


@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_multi_head_matches_numpy_reference_and_masks_padding(normalization: str) -> None:
    layer, (wq, wk, wv) = built_layer(heads=2, key_dim=4, value_dim=6, dq=3, dk=5, dv=2,
                                      normalization=normalization)
    softmax = normalization == "softmax"
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype("float32") for s in [(3, 3), (3, 4, 5), (3, 4, 2)])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    out = np.asarray(layer(q, k, v, mask))
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask, wq, wk, wv, 2, softmax),
                               atol=1e-5)
    assert out.shape == (3, 6)
    np.testing.assert_array_equal(out[2], 0.0)  # empty sequence -> zeros, not a mean of padding
    k2, v2 = k.copy(), v.copy()
    k2[1, :2], v2[1, :2] = 99.0, -99.0  # padded positions of row 1 change
    np.testing.assert_allclose(np.asarray(layer(q, k2, v2, mask)), out, atol=1e-6)


@pytest.mark.parametrize("normalization", ["softmax", "none"])
@pytest.mark.parametrize("mask", [[[0, 1, 1, 1]], [[0, 0, 0, 0]], None])
def test_sequence_projected_once_serves_every_candidate(mask: list[list[int]] | None,
                                                        normalization: str) -> None:
    """Keys of batch 1 take the matrix-product path; it equals the per-sample path (tiled
    sequence) and the hand-computed reference, padding and empty sequence included."""
    layer, (wq, wk, wv) = built_layer(heads=2, key_dim=4, value_dim=4, dq=3, dk=3, dv=3,
                                      normalization=normalization)
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((5, 3)).astype("float32")
    seq = rng.standard_normal((1, 4, 3)).astype("float32")
    mask = None if mask is None else np.array(mask, bool)
    k, v = layer.project_sequence(seq, seq)
    assert tuple(k.shape) == (1, 4, 2, 2)
    served = np.asarray(layer.attend(queries, k, v, mask))
    tiled_mask = np.ones((5, 4), bool) if mask is None else np.repeat(mask, 5, 0)
    tiled = np.asarray(layer(queries, np.repeat(seq, 5, 0), np.repeat(seq, 5, 0), tiled_mask))
    np.testing.assert_allclose(served, tiled, atol=1e-6)
    reference = reference_attention(queries, np.repeat(seq, 5, 0), np.repeat(seq, 5, 0),
                                    tiled_mask, wq, wk, wv, 2, normalization == "softmax")
    np.testing.assert_allclose(served, reference, atol=1e-5)
    if mask is not None and not mask.any():
        np.testing.assert_array_equal(served, 0.0)


def test_weight_shapes_and_config_round_trip() -> None:
    layer, _ = built_layer(heads=2, key_dim=4, value_dim=6, dq=3, dk=5, dv=2)
    assert [tuple(w.shape) for w in layer.weights] == [(3, 4), (5, 4), (2, 6)]
    clone = TargetAttention.from_config(layer.get_config())
    assert (clone.num_heads, clone.key_dim, clone.value_dim) == (2, 4, 6)
    assert clone.normalization == "softmax"
    plain = TargetAttention.from_config({**layer.get_config(), "normalization": "none"})
    assert plain.normalization == "none"


@pytest.mark.parametrize("kwargs", [{"num_heads": 0}, {"num_heads": 3, "key_dim": 8},
                                    {"num_heads": 2, "key_dim": 4, "value_dim": 3},
                                    {"num_heads": 2, "key_dim": 4, "normalization": "sum"}])
def test_invalid_arguments_name_the_value(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="num_heads|key_dim|value_dim|normalization"):
        TargetAttention(**kwargs)


def test_keras_file_round_trip(tmp_path: Path) -> None:
    q_in, seq_in = keras.Input((3,)), keras.Input((4, 3))
    mask_in = keras.Input((4,), dtype="bool")
    out = TargetAttention(num_heads=2, key_dim=4)(q_in, seq_in, seq_in, mask_in)
    model = keras.Model([q_in, seq_in, mask_in], out)
    rng = np.random.default_rng(3)
    data = [rng.standard_normal((2, 3)).astype("float32"),
            rng.standard_normal((2, 4, 3)).astype("float32"), np.array([[1, 1, 0, 0], [1] * 4], bool)]
    model.save(tmp_path / "ta.keras")
    loaded = keras.saving.load_model(tmp_path / "ta.keras")
    np.testing.assert_allclose(np.asarray(loaded(data)), np.asarray(model(data)), atol=1e-6)
