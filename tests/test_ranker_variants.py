"""Full-grid variants (Table 5: full_mba32/16/8; Fig. 4: no_id, no_stats, no_mm) and Fig. 3's
MBA level importance: weights, what each variant ignores, a training step, train -> evaluate ->
export, and the metrics key the report reads."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from test_ranker_fixtures import training_world
from test_ranker_model import DIMS, batch, model

from saviorrec.config import Config, RankerConfig
from saviorrec.lake import Lake
from saviorrec.metrics import read_metrics
from tf_ranker.data import load_items, load_samples
from tf_ranker.evaluate import run_evaluate
from tf_ranker.export import run_export
from tf_ranker.layers import ModalBehaviorAlignment
from tf_ranker.models import SaviorRanker
from tf_ranker.train import model_kwargs, run_train
from tf_ranker.variants import Variant

NEW = ("full_mba32", "full_mba16", "full_mba8", "no_id", "no_stats", "no_mm")


def shapes(variant: str, **kw: object) -> dict[str, tuple[int, ...]]:
    return {w.path.split("/", 1)[1]: tuple(w.shape) for w in model(variant, **kw).weights}


def test_table5_variants_narrow_only_the_mba_codebook() -> None:
    full = shapes("full")
    for dim in (32, 16, 8):
        narrow = shapes(f"full_mba{dim}")
        assert narrow["mba/codebook"] == (3, 16, dim)  # L x K of the RQ codebook, width d_mba
        assert narrow["mba/fusion/kernel"] == (3 * dim, 8)  # L * d_mba -> d
        others = {k: v for k, v in narrow.items() if not k.startswith("mba/")}
        assert others == {k: v for k, v in full.items() if not k.startswith("mba/")}
    assert model("full_mba16").get_config()["mba_dim"] == 16
    # no argument, no variant width: ranker.mba_dim's default, the paper's 64
    assert model("full", mba_dim=None).model_config.mba_dim == RankerConfig().mba_dim == 64
    with pytest.raises(ValueError, match="mba_dim=16, got 4"):
        SaviorRanker(variant="full_mba16", **DIMS)


def test_fig4_variants_drop_one_feature_group() -> None:
    full, no_id, no_stats = shapes("full"), shapes("no_id"), shapes("no_stats")
    h = 4 + 6 + 4  # item id + statistics + pv bucket
    assert full["item_embedding/embeddings"] == (50, 4)
    assert "item_embedding/embeddings" not in no_id and "user_embedding/embeddings" in no_id
    assert no_id["attention/behavior/key/kernel"] == (h - 4, 8)
    assert no_id["dnn_0/kernel"] == (4 + 3 + (h - 4) + 8 + 4 * 8, 16)
    assert not any(k.startswith(("pv_bucket_embedding", "stat_transform")) for k in no_stats)
    assert no_stats["attention/behavior/key/kernel"] == (4, 8)
    assert no_stats["dnn_0/kernel"] == (4 + 3 + 4 + 8 + 4 * 8, 16)
    assert no_id["mba/codebook"] == no_stats["mba/codebook"] == full["mba/codebook"]
    assert shapes("no_mm") == shapes("base")
    with pytest.raises(ValueError, match="item ids or statistics"):
        Variant(multimodal=True, use_id=False, use_stats=False)


def _changed(m: SaviorRanker, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> float:
    return float(np.max(np.abs(np.asarray(m(x)) - np.asarray(m(y)))))


@pytest.mark.parametrize("variant", ["full", "no_id", "no_stats", "no_mm"])
def test_each_variant_reads_exactly_its_feature_groups(variant: str) -> None:
    x, _ = batch()
    # Trained-looking weights: a zero MBA codebook would hide the semantic ids' effect.
    m = model(variant)
    for w in m.weights:
        w.assign(np.random.default_rng(1).normal(0, 0.5, w.shape).astype("float32"))
    ids = {k: v.copy() for k, v in x.items()}
    ids["item_id"] = (x["item_id"] % 49) + 1  # other (non-padding) items, same sequence mask
    ids["seq_item_ids"] = np.where(x["seq_item_ids"] > 0, (x["seq_item_ids"] % 49) + 1, 0)
    stats = {k: v.copy() for k, v in x.items()}
    for name in ("item_stats", "seq_stats"):
        stats[name] = x[name] * 3 + 7
    stats["item_pv_bucket"] = (x["item_pv_bucket"] + 1) % 5
    mm = {k: v.copy() for k, v in x.items()}
    for name in ("item_embedding", "seq_embedding"):
        mm[name] = -x[name]
    expected = {"full": (True, True, True), "no_id": (False, True, True),
                "no_stats": (True, False, True), "no_mm": (True, True, False)}[variant]
    for reads, changed in zip(expected, (ids, stats, mm), strict=True):
        delta = _changed(m, x, changed)
        assert (delta > 1e-4) if reads else (delta == 0.0), (variant, delta)


@pytest.mark.parametrize("variant", NEW)
def test_each_new_variant_trains_a_step(variant: str) -> None:
    x, y = batch(8)
    m = model(variant)
    m.compile(optimizer=keras.optimizers.Adagrad(0.1), loss="binary_crossentropy")
    before = [np.asarray(w).copy() for w in m.trainable_weights]
    # Two steps: at the zero-initialised codebook v = 0, so the fusion kernel's first gradient
    # is zero; the codebook moves in step 1, the fusion kernel from step 2.
    losses = [m.train_on_batch(x, y) for _ in range(2)]
    assert np.isfinite(losses).all()
    unchanged = [w.path for b, w in zip(before, m.trainable_weights, strict=True)
                 if np.array_equal(b, np.asarray(w))]
    assert unchanged == []


def test_level_importance_by_hand() -> None:
    layer = ModalBehaviorAlignment(levels=2, codebook_size=3, codebook_dim=2)
    layer.build((None, 4), (None, 3))
    codebook = np.zeros((2, 3, 2), "float32")
    codebook[0, 0], codebook[0, 2], codebook[0, 1] = [3, 4], [0, 1], [100, 0]  # row 1 unused
    codebook[1, 1] = [6, 8]
    layer.set_codebook(codebook)
    kernel = np.zeros((4, 4), "float32")
    kernel[0, :2] = [1, 0]  # level 1 reads kernel rows 0-1
    kernel[1, :2] = [0, 3]
    kernel[2] = [2, 0, 0, 0]  # level 2 reads kernel rows 2-3
    kernel[3] = [0, 0, 0, 4]
    layer.fusion.kernel.assign(kernel)
    # Items' codes: level 1 uses rows 0 and 2 (row 0 twice), level 2 row 1 and out-of-range 9 -> 2.
    ids = np.array([[0, 1, 0], [2, 1, 5], [0, 9, 0]])
    out = layer.level_importance(ids)
    assert out["codebook"] == pytest.approx([(5 + 1) / 2, (10 + 0) / 2])
    assert out["fusion"] == pytest.approx([(1 + 3) / 2, (2 + 4) / 2])
    assert out["codebook_rows_used"] == [2, 2]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("ranker_grid")
    cfg = training_world(root, epochs=1, batch_size=64, bootstrap_samples=10, seeds=[0, 1],
                         heads=2, attention_dim=8, id_dim=4, stat_dim=4, dnn_units=[16, 8])
    for variant in ("full", *NEW):
        run_train(cfg, variant=variant, seed=0)
    run_train(cfg, variant="full", seed=1)
    return cfg


def test_model_kwargs_take_the_variants_mba_width(grid: Config) -> None:
    lake = Lake.from_config(grid)
    items, test = load_items(lake.training_items), load_samples(lake.training("test"))
    assert model_kwargs(grid, "full", [test], items, None, "v")["mba_dim"] == 64  # ranker.mba_dim
    assert model_kwargs(grid, "full_mba8", [test], items, None, "v")["mba_dim"] == 8


def test_grid_variants_train_evaluate_and_export(grid: Config) -> None:
    import tensorflow as tf

    lake = Lake.from_config(grid)
    result = run_evaluate(grid, ["full", *NEW])
    metrics = read_metrics(lake.metrics)
    for variant in NEW:
        assert 0.0 <= metrics["ranker"][variant]["auc"]["mean"] <= 1.0
        assert set(metrics["ranker"][variant]["auc_by_bucket"]) == set(grid.stats.bucket_labels())
    meta = json.loads(lake.ranker("full_mba8", 0).meta.read_text())
    assert meta["model_config"]["mba_dim"] == 8
    # Importance only where there is an MBA; no_mm (= base) has none.
    assert "mba_level_importance" in result["ranker"]["no_id"]
    assert "mba_level_importance" not in result["ranker"]["no_mm"]
    for variant in ("full_mba8", "no_id", "no_stats", "no_mm"):
        exported = run_export(grid, variant=variant, seed=0)  # checks SavedModel == Keras
        assert exported["variant"] == variant and exported["check_max_abs_diff"] <= 1e-5
        signature = tf.saved_model.load(str(lake.export_dir)).signatures["serving_default"]
        # One serving contract for every variant: inputs a variant ignores are still accepted.
        assert set(signature.structured_input_signature[1]) == set(exported["inputs"])
        assert "item_stats" in exported["inputs"] and "item_id" in exported["inputs"]


def test_full_writes_fig3_level_importance(grid: Config, tmp_path: Path) -> None:
    from saviorrec.report import figure_mba_norms

    lake = Lake.from_config(grid)
    run_evaluate(grid, ["full"])
    value = read_metrics(lake.metrics)["ranker"]["full"]["mba_level_importance"]
    metas = [json.loads(lake.ranker("full", s).meta.read_text()) for s in (0, 1)]
    per_seed = [m["mba_level_importance"] for m in metas]
    assert value["levels"] == 2 and set(value["seeds"]) == {"0", "1"}
    for key in ("codebook", "fusion"):
        np.testing.assert_allclose(value[key], np.mean([p[key] for p in per_seed], axis=0))
    # Recompute seed 0 from the saved model: the codebook rows of the train split's items.
    saved = keras.saving.load_model(lake.ranker("full", 0).model, compile=False)
    train, items = load_samples(lake.training("train")), load_items(lake.training_items)
    seen = np.unique(np.concatenate([train.item_id, train.seq_item_ids.ravel()]))
    codes = items.semantic_ids[seen[seen > 0]][:, :2]
    codebook = np.asarray(saved.mba.codebook)
    for level in range(2):
        rows = np.unique(codes[:, level])
        expected = np.linalg.norm(codebook[level, rows], axis=-1).mean()
        assert per_seed[0]["codebook"][level] == pytest.approx(expected, rel=1e-6)
        assert per_seed[0]["codebook_rows_used"][level] == rows.size
    assert min(per_seed[0]["codebook"]) > 0  # the zero-initialised codebook has learnt
    assert figure_mba_norms(read_metrics(lake.metrics), tmp_path / "fig3.png")
    assert (tmp_path / "fig3.png").stat().st_size > 0
