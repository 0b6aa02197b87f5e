"""SaviorRanker: variants, weight shapes, serving == per-sample, padding, saving, training."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import keras
import numpy as np
import pytest

from saviorrec.config import RankerConfig
from saviorrec.ranker_inputs import BY_NAME, CANDIDATE
from tf_ranker.export import per_sample_inputs
from tf_ranker.model_config import CONFIG_VERSION, RankerModelConfig
from tf_ranker.models import SaviorRanker
from tf_ranker.synthetic import synthetic_inputs
from tf_ranker.variants import VARIANTS, get_variant

DIMS = {"num_users": 20, "num_items": 50, "num_pv_buckets": 5, "embedding_dim": 8, "levels": 3,
        "codebook_size": 16, "id_dim": 4, "stat_dim": 4, "heads": 2, "attention_dim": 8,
        "mba_dim": 4, "dnn_units": (16, 8, 4), "simtier_bins": 5}


def batch(n: int = 6, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return synthetic_inputs(batch_size=n, seq_len=5, embedding_dim=8, levels=3, codebook_size=16,
                            num_users=20, num_items=50, seed=seed)


def model(variant: str, **kw: object) -> SaviorRanker:
    keras.utils.set_random_seed(0)
    dims = {**DIMS, **kw}
    if get_variant(variant).mba_dim is not None:  # full_mba32/16/8 fix their own width
        dims.pop("mba_dim")
    return SaviorRanker(variant=variant, **dims)


def test_variant_weights() -> None:
    names = {v: {w.path.split("/", 1)[1] for w in model(v).weights} for v in VARIANTS}
    assert not any("mba" in n for n in names["base"] | names["simtier"] | names["no_mba"])
    full = {w.path.split("/", 1)[1]: tuple(w.shape) for w in model("full").weights}
    assert full["mba/codebook"] == (3, 16, 4)  # the RQ codebook's L x K, width d_mba
    assert full["mba/fusion/kernel"] == (12, 8)  # concat of L * d_mba -> d
    h = 4 + 6 + 4  # id + statistics + pv bucket
    assert full["attention/modal2behavior/value/kernel"] == (h, 8)
    assert full["attention/modal2behavior/query/kernel"] == (8, 8)
    # DNN input: user (id + 3 statistics) + h_cand + z_cand + 4 attention blocks; 3 LeakyReLU
    # layers + sigmoid.
    assert full["dnn_0/kernel"] == (4 + 3 + h + 8 + 4 * 8, 16)
    assert full["pctr/kernel"] == (4, 1)
    assert sum("attention/" in n and "kernel" in n for n in names["no_bidir"]) == 6
    assert model("simtier").get_layer("dnn_0").kernel.shape[0] == 4 + 3 + h + 8 + 5
    crossed = model("base", feature_cross=True)
    assert crossed.get_layer("feature_cross").dense.kernel.shape == (7 + h + 8, 7 + h + 8)
    with pytest.raises(ValueError, match="unknown ranker variant"):
        model("fancy")


def test_mba_starts_as_identity_and_output_is_float32_probability() -> None:
    x, _ = batch()
    full = model("full")
    np.testing.assert_array_equal(np.asarray(full._modal(x["item_embedding"],
                                                         x["item_semantic_ids"])),
                                  x["item_embedding"])
    out = np.asarray(full(x))
    assert out.shape == (6, 1) and out.dtype == np.float32 and ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("normalization", ["softmax", "none"])
@pytest.mark.parametrize("variant", ["base", "simtier", "no_bidir", "full"])
def test_one_sequence_many_candidates_equals_per_sample(variant: str, normalization: str) -> None:
    x, _ = batch()
    if normalization == "none":  # unnormalised sums of unit-scale inputs saturate the sigmoid
        x = {k: v * 0.1 if v.dtype == np.float32 else v for k, v in x.items()}
    m = model(variant, attention_normalization=normalization)
    assert m.attention.normalization == normalization
    request = {k: (v if BY_NAME[k].side == CANDIDATE else v[:1]) for k, v in x.items()}
    served = np.asarray(m(request)).reshape(-1)
    tiled = np.asarray(m(per_sample_inputs(request))).reshape(-1)
    np.testing.assert_allclose(served, tiled, atol=1e-6)
    assert not np.allclose(served, served[0])  # candidates really differ


def test_padding_positions_do_not_matter_and_unknown_ids_read_row_zero() -> None:
    x, _ = batch()
    m = model("full")
    ref = np.asarray(m(x))
    y = {k: v.copy() for k, v in x.items()}
    pad = x["seq_item_ids"] == 0
    assert pad.any()
    y["seq_stats"][pad] = 123.0
    y["seq_embedding"][pad] = -7.0
    y["seq_semantic_ids"][pad] = 5
    np.testing.assert_allclose(np.asarray(m(y)), ref, atol=1e-6)
    y["item_id"][:] = 10_000  # beyond the vocabulary of 50 items
    z = {**x, "item_id": np.zeros_like(x["item_id"])}
    np.testing.assert_allclose(np.asarray(m(y)), np.asarray(m(z)), atol=1e-6)


def test_no_raw_mm_copies_the_rq_codebook_without_skip() -> None:
    m = model("no_raw_mm", mba_dim=4)
    codebook = np.random.default_rng(0).standard_normal((3, 16, 4)).astype("float32")
    m.set_rq_codebook(codebook)
    np.testing.assert_array_equal(np.asarray(m.mba.codebook), codebook)
    assert m.mba.skip is False
    x, _ = batch()
    z = np.asarray(m._modal(x["item_embedding"], x["item_semantic_ids"]))
    shifted = np.asarray(m._modal(x["item_embedding"] + 1.0, x["item_semantic_ids"]))
    np.testing.assert_allclose(z, shifted)  # the raw embedding no longer enters
    with pytest.raises(ValueError, match="zero-initialised"):
        model("full").set_rq_codebook(codebook)


def test_keras_file_and_config_round_trip(tmp_path: Path) -> None:
    x, _ = batch()
    m = model("full", feature_cross=True, rqvae_version="rq-7")
    m.save(tmp_path / "ranker.keras")
    loaded = keras.saving.load_model(tmp_path / "ranker.keras", compile=False)
    assert loaded.rqvae_version == "rq-7" and loaded.get_config() == m.get_config()
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(m(x)), atol=1e-6)
    assert len(SaviorRanker.from_config(m.get_config()).weights) == len(m.weights)


def test_standardised_statistics_round_trip_and_change_only_the_statistics(tmp_path: Path) -> None:
    x, _ = batch()
    moments = {"item_mean": [1.0] * 6, "item_std": [2.0] * 6,
               "user_mean": [3.0, 2.0, 0.5], "user_std": [1.5, 1.5, 0.2]}
    m = model("full", stat_moments=moments)
    stats = np.asarray(m.stat_transform(x["item_stats"]))
    np.testing.assert_allclose(stats, (np.asarray(model("full").stat_transform(x["item_stats"]))
                                       - 1.0) / 2.0, atol=1e-6)
    m.save(tmp_path / "ranker.keras")
    loaded = keras.saving.load_model(tmp_path / "ranker.keras", compile=False)
    assert loaded.get_config()["stat_moments"] == moments
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(m(x)), atol=1e-6)
    # same weights, other moments: other scores (the moments are applied, not just stored)
    plain = model("full")
    plain.set_weights(m.get_weights())
    assert np.abs(np.asarray(plain(x)) - np.asarray(m(x))).max() > 1e-4
    with pytest.raises(ValueError, match="stat_moments has keys"):
        model("full", stat_moments={"item_mean": [0.0] * 6})


def test_one_training_step_reduces_the_loss() -> None:
    x, y = batch(n=64, seed=1)
    m = model("full")
    m.compile(optimizer=keras.optimizers.Adagrad(0.05), loss="binary_crossentropy")
    before = float(m.evaluate(x, y, verbose=0))
    codebook_before = np.asarray(m.mba.codebook).copy()
    m.train_on_batch(x, y)
    assert float(m.evaluate(x, y, verbose=0)) < before
    assert np.abs(np.asarray(m.mba.codebook) - codebook_before).max() > 0  # MBA learns


def test_items_unseen_in_training_share_the_unknown_id_row(tmp_path: Path) -> None:
    """After set_known_items, two candidates that differ only in an unseen id score the same
    (both read row 0); a known id still reads its own row; the rule survives save and load."""
    x, _ = batch()
    x = {k: np.repeat(v[:1], 6, axis=0) for k, v in x.items()}  # one user, one candidate ...
    x["item_id"] = np.array([7, 8, 9, 7, 8, 9])  # ... under six ids
    assert not set(x["seq_item_ids"][0]) & {7, 8}
    m = model("full", id_dropout=0.2)
    before = np.asarray(m(x)).reshape(-1)
    assert len(np.unique(before[:3])) == 3  # three own random rows: three scores
    m.set_known_items(np.array([9, 0, *x["seq_item_ids"][0]]))  # the sequence stays known
    after = np.asarray(m(x)).reshape(-1)
    assert after[0] == after[1] != after[2]  # 7 and 8 unknown, 9 known
    np.testing.assert_allclose(after[2], before[2], rtol=1e-6)
    assert m.get_config()["id_dropout"] == 0.2
    m.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)).reshape(-1), after, rtol=1e-6)


def _rewrite_saved_config(path: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Replace the model config inside a .keras file (a zip holding config.json)."""
    with zipfile.ZipFile(path) as src:
        files = {name: src.read(name) for name in src.namelist()}
    saved = json.loads(files["config.json"])
    saved["config"] = edit(saved["config"])
    files["config.json"] = json.dumps(saved).encode()
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in files.items():
            dst.writestr(name, data)


def test_one_frozen_config_is_taken_and_saved() -> None:
    m = model("full", rqvae_version="rq-7")
    config = m.model_config
    assert isinstance(config, RankerModelConfig) and config.mba_dim == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.heads = 4  # type: ignore[misc]
    assert SaviorRanker(config).get_config() == {**m.get_config(), "name": ANY}
    assert m.get_config()["config_version"] == CONFIG_VERSION
    saved = {k: v for k, v in m.get_config().items() if k != "name"}
    assert RankerModelConfig.from_dict(saved) == config
    with pytest.raises(ValueError, match="a config or its fields, not both"):
        SaviorRanker(config, heads=2)
    # a width left out takes ranker's default, from saviorrec.config alone
    default = RankerConfig()
    assert model("base").model_config.stat_dim == 4
    small = SaviorRanker(variant="base", num_users=3, num_items=3, num_pv_buckets=2,
                         embedding_dim=4, levels=1, codebook_size=2).model_config
    assert (small.heads, small.semantic_id_width) == (default.heads, 2)


def test_a_keras_file_saved_before_the_config_class_loads(tmp_path: Path) -> None:
    """Version 1: the flat keyword arguments the model saved before RankerModelConfig."""
    x, _ = batch()
    m = model("full", rqvae_version="rq-7")
    m.save(tmp_path / "v1.keras")
    _rewrite_saved_config(tmp_path / "v1.keras",
                          lambda c: {k: v for k, v in c.items() if k != "config_version"})
    loaded = keras.saving.load_model(tmp_path / "v1.keras", compile=False)
    assert loaded.model_config == m.model_config
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(m(x)), atol=1e-6)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: {k: v for k, v in c.items() if k not in ("config_version", "id_dropout")},
     r"version 1 without \['id_dropout'\].*retrain"),
    (lambda c: {**c, "config_version": 3}, r"config version 3: this saviorrec reads versions 1, 2"),
    (lambda c: {**c, "width": 3}, r"unknown fields \['width'\]"),
])
def test_a_keras_file_of_another_version_names_the_version_it_needs(
        tmp_path: Path, edit: Callable[[dict[str, Any]], dict[str, Any]], message: str) -> None:
    model("full").save(tmp_path / "other.keras")
    _rewrite_saved_config(tmp_path / "other.keras", edit)
    with pytest.raises(ValueError, match=message):
        keras.saving.load_model(tmp_path / "other.keras", compile=False)
