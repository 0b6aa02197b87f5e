"""BidirectionalTargetAttention (eq. 11-15): each block's query/key/value sides and the order."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from test_layer_target_attention import reference_attention

from tf_ranker.layers import BidirectionalTargetAttention

DH, DZ = 3, 2  # behaviour and modal widths differ, so a swapped side cannot go unnoticed


def built(blocks: tuple[str, ...] = ("behavior", "modal", "behavior2modal", "modal2behavior"),
          normalization: str = "softmax") -> BidirectionalTargetAttention:
    layer = BidirectionalTargetAttention(num_heads=2, key_dim=4, blocks=blocks,
                                         normalization=normalization)
    layer.build((None, DH), (None, None, DH), (None, DZ), (None, None, DZ))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    return layer


def inputs() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    h_cand, z_cand = rng.standard_normal((2, DH)), rng.standard_normal((2, DZ))
    h_seq, z_seq = rng.standard_normal((2, 4, DH)), rng.standard_normal((2, 4, DZ))
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], bool)
    return tuple(x.astype("float32") if x.dtype != bool else x
                 for x in (h_cand, h_seq, z_cand, z_seq, mask))


@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_blocks_follow_eq_11_to_15(normalization: str) -> None:
    layer = built(normalization=normalization)
    h_cand, h_seq, z_cand, z_seq, mask = inputs()
    out = np.asarray(layer(h_cand, h_seq, z_cand, z_seq, mask))
    assert out.shape == (2, 4 * 4)

    def ta(name: str, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        block = getattr(layer, f"ta_{name}")
        w = [np.asarray(x) for x in (block.query_dense.kernel, block.key_dense.kernel,
                                     block.value_dense.kernel)]
        return reference_attention(q, k, v, mask, *w, heads=2,
                                   softmax=normalization == "softmax")

    expected = np.concatenate([
        ta("behavior", h_cand, h_seq, h_seq),  # eq. 11
        ta("modal", z_cand, z_seq, z_seq),  # eq. 12
        ta("behavior2modal", h_cand, h_seq, z_seq),  # eq. 14
        ta("modal2behavior", z_cand, z_seq, h_seq),  # eq. 13
    ], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_weight_shapes_of_the_cross_blocks() -> None:
    layer = built()
    m2b, b2m = layer.ta_modal2behavior, layer.ta_behavior2modal
    assert [tuple(w.shape) for w in m2b.weights] == [(DZ, 4), (DZ, 4), (DH, 4)]
    assert [tuple(w.shape) for w in b2m.weights] == [(DH, 4), (DH, 4), (DZ, 4)]
    assert len(layer.weights) == 12


def test_subset_of_blocks_and_projected_sequence_reuse() -> None:
    layer = built(blocks=("modal", "behavior"))
    assert layer.blocks == ("behavior", "modal")  # canonical eq. 15 order
    h_cand, h_seq, z_cand, z_seq, mask = inputs()
    out = np.asarray(layer(h_cand, h_seq, z_cand, z_seq, mask))
    assert out.shape == (2, 8)
    projected = layer.project_sequence(h_seq[:1], z_seq[:1])
    served = np.asarray(layer.attend(h_cand, z_cand, projected, mask[:1]))
    tiled = np.asarray(layer(h_cand, np.repeat(h_seq[:1], 2, 0), z_cand,
                             np.repeat(z_seq[:1], 2, 0), np.repeat(mask[:1], 2, 0)))
    np.testing.assert_allclose(served, tiled, atol=1e-6)


@pytest.mark.parametrize("blocks", [(), ("behavior", "behavior"), ("visual",)])
def test_invalid_blocks(blocks: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="blocks"):
        BidirectionalTargetAttention(blocks=blocks)


def test_config_and_keras_file_round_trip(tmp_path: Path) -> None:
    clone = BidirectionalTargetAttention.from_config(built(("behavior", "modal")).get_config())
    assert clone.blocks == ("behavior", "modal") and clone.num_heads == 2
    none = BidirectionalTargetAttention.from_config(built(normalization="none").get_config())
    none.build((None, DH), (None, None, DH), (None, DZ), (None, None, DZ))
    assert {b.normalization for b in none.attention.values()} == {"none"}
    ins = [keras.Input((DH,)), keras.Input((4, DH)), keras.Input((DZ,)), keras.Input((4, DZ)),
           keras.Input((4,), dtype="bool")]
    model = keras.Model(ins, BidirectionalTargetAttention(num_heads=2, key_dim=4)(*ins))
    data = list(inputs())
    model.save(tmp_path / "bta.keras")
    loaded = keras.saving.load_model(tmp_path / "bta.keras")
    np.testing.assert_allclose(np.asarray(loaded(data)), np.asarray(model(data)), atol=1e-6)
