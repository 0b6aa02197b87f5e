"""End to end on a tiny training set: train (TensorFlow and JAX), evaluate, export, serve."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score
from test_ranker_fixtures import RQVAE_VERSION, training_world

from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from saviorrec.metrics import auc, read_metrics, update_metrics
from tf_ranker.batches import RankerBatches
from tf_ranker.data import load_items, load_samples
from tf_ranker.evaluate import run_evaluate, smoothed_mean_scores
from tf_ranker.export import per_sample_inputs, run_export
from tf_ranker.train import (
    TrainingCollapsed,
    check_not_collapsed,
    eval_batch_size,
    learning_rate_schedule,
    make_optimizer,
    model_kwargs,
    run_train,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("ranker_run")
    # standardize_stats: the export and reload tests below carry the statistics' moments
    cfg = training_world(root, epochs=2, batch_size=64, bootstrap_samples=20, seeds=[0, 1],
                         early_stopping_patience=1, standardize_stats=True)
    for variant in ("base", "full"):
        run_train(cfg, variant=variant, seed=0)
    return cfg


def test_train_writes_model_meta_and_test_predictions(trained: Config) -> None:
    lake = Lake.from_config(trained)
    out = lake.ranker_dir("full", 0)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["variant"] == "full" and meta["seed"] == 0 and meta["backend"] == "tensorflow"
    assert meta["rqvae_version"] == RQVAE_VERSION and 1 <= meta["epochs"] <= 2
    assert meta["model_config"]["num_items"] == 31 and meta["model_config"]["levels"] == 2
    assert len(meta["model_config"]["stat_moments"]["item_mean"]) == 6
    assert (out / "checkpoints" / "best.weights.h5").is_file() and (out / "history.csv").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    model = keras.saving.load_model(out / "model.keras", compile=False)
    assert model.rqvae_version == RQVAE_VERSION
    items = load_items(lake.training_items)
    preds = pq.read_table(out / "predictions_test.parquet")
    assert preds.column_names == ["user_id", "item_id", "label", "eval_pv_bucket", "score"]
    test = load_samples(lake.training("test"))
    again = model.predict(RankerBatches(test, items, batch_size=64, with_labels=False), verbose=0)
    np.testing.assert_allclose(preds["score"].to_numpy(), again.reshape(-1), atol=1e-6)
    assert meta["test_auc"] == pytest.approx(auc(test.label, again.reshape(-1)), abs=1e-6)
    valid = load_samples(lake.training("valid"))
    val = model.predict(RankerBatches(valid, items, batch_size=64, with_labels=False), verbose=0)
    assert meta["val_auc"] == pytest.approx(auc(valid.label, val.reshape(-1)), abs=1e-6)
    labels = trained.stats.bucket_labels()
    assert sorted(meta["val_auc_by_bucket"]) == sorted(labels)  # the meta is written key-sorted
    compared = 0
    for i, name in enumerate(labels):  # sklearn on the bucket's own rows, by hand
        rows = valid.eval_pv_bucket == i
        if len(set(valid.label[rows].tolist())) == 2:
            assert meta["val_auc_by_bucket"][name] == pytest.approx(
                roc_auc_score(valid.label[rows], val.reshape(-1)[rows]), abs=1e-6)
            compared += 1
        else:  # one class (or no row): no AUC
            assert meta["val_auc_by_bucket"][name] is None
    assert compared >= 1
    assert meta["history"]["val_auc"][meta["best_epoch"] - 1] == max(meta["history"]["val_auc"])


def test_learning_rate_decays_from_lr_to_lr_final(trained: Config) -> None:
    paper = trained.with_overrides(ranker={"lr": 0.01, "lr_final": 0.001})  # paper 3.4
    schedule = learning_rate_schedule(paper, 100)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(50)) == pytest.approx(0.01 * 0.1 ** 0.5, rel=1e-5)
    assert float(schedule(100)) == pytest.approx(0.001, rel=1e-5)


def test_adagrad_first_step_by_hand(trained: Config) -> None:
    """w -= lr * g / sqrt(accumulator0 + g^2 + 1e-7): the accumulator sets the step of small
    gradients (configs/movielens.yaml lowers it from Keras's 0.1)."""
    cfg = trained.with_overrides(ranker={"lr": 0.05, "lr_final": 0.005})
    g = np.array([1e-3, 0.1], "float32")
    for accumulator in (0.1, 0.001):
        cfg_a = cfg.with_overrides(ranker={"adagrad_initial_accumulator": accumulator})
        w = keras.Variable(np.ones(2, "float32"))
        make_optimizer(cfg_a, 100).apply_gradients([(keras.ops.convert_to_tensor(g), w)])
        expected = 1.0 - 0.05 * g / np.sqrt(accumulator + g.astype("float64") ** 2 + 1e-7)
        np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-6)


def test_collapse_check_by_hand() -> None:
    history = {"loss": [7.65, 7.91]}
    check_not_collapsed(np.array([0.2, 0.7, 0.4]), history, variant="full", seed=0)  # ranks
    with pytest.raises(TrainingCollapsed, match="every validation score is 0.5 .*7.65, 7.91"):
        check_not_collapsed(np.full(4, 0.5), history, variant="full", seed=0)
    with pytest.raises(TrainingCollapsed, match="1 of 3 validation scores are not finite"):
        check_not_collapsed(np.array([0.2, np.nan, 0.4]), history, variant="base", seed=1)
    # a saturated sigmoid: scores spread from 0 to 1, but 3 of 4 sit at an end
    with pytest.raises(TrainingCollapsed, match="75% of the validation scores are within 1e-06"):
        check_not_collapsed(np.array([0.0, 3e-38, 1.0, 0.3]), history, variant="full", seed=1)
    check_not_collapsed(np.array([0.0, 1.0, 0.3, 0.6]), history, variant="full", seed=1)  # half
    check_not_collapsed(np.array([1e-5, 0.99998, 0.5]), history, variant="full", seed=1)


def test_collapsed_training_raises_and_writes_no_model(tmp_path: Path) -> None:
    """Steps far too large saturate the sigmoid: a clear error, not metrics of a constant."""
    cfg = training_world(tmp_path, epochs=2, batch_size=64, lr=1e5, lr_final=1e5,
                         adagrad_initial_accumulator=1e-7)
    with pytest.raises(TrainingCollapsed, match="base seed 0: training collapsed.*ranker.lr"):
        run_train(cfg, variant="base", seed=0)
    out = Lake.from_config(cfg).ranker_dir("base", 0)
    assert not any((out / name).exists()
                   for name in ("model.keras", "meta.json", "predictions_test.parquet"))


def test_standardize_stats_measures_the_training_split(trained: Config) -> None:
    lake = Lake.from_config(trained)
    train, valid = (load_samples(lake.training(s)) for s in ("train", "valid"))
    items = load_items(lake.training_items)
    off = trained.with_overrides(ranker={"standardize_stats": False})
    assert model_kwargs(off, "full", [train, valid], items, None, RQVAE_VERSION, train=train)[
        "stat_moments"] is None  # log1p only
    moments = model_kwargs(trained, "full", [train, valid], items, None, RQVAE_VERSION,
                           train=train)["stat_moments"]
    with pytest.raises(ValueError, match="needs the training split"):
        model_kwargs(trained, "full", [train, valid], items, None, RQVAE_VERSION)
    # pv, clicks, ctr, pv_recent, clicks_recent, ctr_recent; user_pv, user_clicks, user_ctr
    item = train.stats.astype("float64")
    item[:, [0, 1, 3, 4]] = np.log1p(item[:, [0, 1, 3, 4]])
    user = train.user_stats.astype("float64")
    user[:, :2] = np.log1p(user[:, :2])
    np.testing.assert_allclose(moments["item_mean"], item.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(moments["item_std"], item.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(moments["user_mean"], user.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(moments["user_std"], user.std(axis=0), rtol=1e-6)


def test_no_raw_mm_needs_the_rq_codebook(trained: Config) -> None:
    lake = Lake.from_config(trained)
    items, test = load_items(lake.training_items), load_samples(lake.training("test"))
    with pytest.raises(FileNotFoundError, match="codebooks.npy"):
        model_kwargs(trained, "no_raw_mm", [test], items, None, RQVAE_VERSION)
    kw = model_kwargs(trained, "no_raw_mm", [test], items, np.zeros((2, 4, 8)), RQVAE_VERSION,
                      train=test)
    assert (kw["levels"], kw["codebook_size"], kw["mba_dim"]) == (2, 4, 8)


def test_smoothed_mean_reference_by_hand() -> None:
    # train: user 1 clicks 1 of 2, user 2 clicks 1 of 1, item 5 clicked 2 of 3; p = 2/3.
    # strength 1: user 1 -> (1 + 2/3) / 3 = 5/9, user 2 -> (1 + 2/3) / 2 = 5/6, item 5 -> (2 + 2/3)/4 = 2/3
    scores = smoothed_mean_scores(np.array([1, 1, 2]), np.array([5, 5, 5]),
                                  np.array([1.0, 0.0, 1.0]), np.array([1, 2, 9]),
                                  np.array([5, 5, 7]), strength=1.0)

    def logit(p: float) -> float:
        return float(np.log(p / (1 - p)))

    np.testing.assert_allclose(scores, [logit(5 / 9) + logit(2 / 3), logit(5 / 6) + logit(2 / 3),
                                        2 * logit(2 / 3)], atol=1e-9)


def test_evaluate_writes_metrics(trained: Config) -> None:
    lake = Lake.from_config(trained)
    update_metrics(lake.metrics, "ranker.full_minus_base", {"diff": 0.5})  # an older evaluation's
    result = run_evaluate(trained, ["base", "full"])
    metrics = read_metrics(lake.metrics)
    preds = pq.read_table(lake.ranker("full", 0).predictions)
    labels, scores = preds["label"].to_numpy(), preds["score"].to_numpy()
    buckets = preds["eval_pv_bucket"].to_numpy()
    full = metrics["ranker"]["full"]
    assert full["auc"]["mean"] == pytest.approx(auc(labels, scores))
    assert list(full["auc"]["seeds"]) == ["0"]  # seed 1 has no predictions
    # validation AUC beside test: what training recorded (checked against the model above)
    meta = json.loads(lake.ranker("full", 0).meta.read_text())
    assert full["valid_auc"] == {"mean": pytest.approx(meta["val_auc"]), "seeds": {"0": meta["val_auc"]}}
    lo, hi = full["auc"]["ci95"]
    assert lo <= full["auc"]["mean"] <= hi
    labels_by_bucket = trained.stats.bucket_labels()
    assert set(full["auc_by_bucket"]) == set(labels_by_bucket)
    in_bucket = buckets == 2
    assert full["auc_by_bucket"][labels_by_bucket[2]]["mean"] == pytest.approx(
        auc(labels[in_bucket], scores[in_bucket]))
    base_preds = pq.read_table(lake.ranker("base", 0).predictions)
    assert "full_minus_base" not in metrics["ranker"]  # each statistic once: full_minus.base
    gap = metrics["ranker"]["full_minus"]["base"]
    assert gap["diff"] == pytest.approx(auc(labels, scores) - auc(labels, base_preds["score"].to_numpy()))
    assert gap["ci95"][0] <= gap["diff"] <= gap["ci95"][1]
    base_scores = base_preds["score"].to_numpy()
    for i, name in enumerate(labels_by_bucket):  # the gain per PV bucket, on that bucket's rows
        rows = buckets == i
        got = gap["by_bucket"][name]
        if len(np.unique(labels[rows])) < 2:
            assert got is None
            continue
        assert got["diff"] == pytest.approx(
            auc(labels[rows], scores[rows]) - auc(labels[rows], base_scores[rows]))
    # the same per bucket of the candidate's pv at its sample time (the training set's stats)
    test = load_samples(lake.training("test"))
    seen = np.searchsorted(trained.stats.pv_buckets, test.stats[:, 0], side="right") - 1
    assert set(gap["by_seen_bucket"]) == set(labels_by_bucket)
    for i, name in enumerate(labels_by_bucket):
        rows = seen == i
        got = gap["by_seen_bucket"][name]
        if len(np.unique(labels[rows])) < 2:
            assert got is None and name not in full["auc_by_seen_bucket"]
            continue
        assert got["diff"] == pytest.approx(
            auc(labels[rows], scores[rows]) - auc(labels[rows], base_scores[rows]))
        assert full["auc_by_seen_bucket"][name] == pytest.approx(auc(labels[rows], scores[rows]))
    assert 0.0 <= metrics["reference"]["smoothed_mean"]["auc"] <= 1.0
    assert result["ranker"]["full"]["auc"]["mean"] == full["auc"]["mean"]
    with pytest.raises(FileNotFoundError, match="no_bidir"):
        run_evaluate(trained, ["no_bidir"])


def test_export_savedmodel_serves_one_user_against_many_candidates(trained: Config) -> None:
    import tensorflow as tf

    meta = run_export(trained, variant="full", seed=0)
    export = Lake.from_config(trained).export_dir
    assert json.loads((export / "meta.json").read_text())["rqvae_version"] == RQVAE_VERSION
    assert meta["inputs"]["seq_embedding"] == {"dtype": "float32", "shape": [1, None, 8]}
    assert meta["inputs"]["user_id"] == {"dtype": "int64", "shape": [1]}
    assert meta["inputs"]["user_stats"] == {"dtype": "float32", "shape": [1, 3]}
    assert meta["inputs"]["item_semantic_ids"] == {"dtype": "int64", "shape": [None, 3]}
    signature = tf.saved_model.load(str(export)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    assert set(specs) == set(meta["inputs"])
    assert specs["user_id"].dtype == tf.int64 and specs["seq_stats"].shape.as_list() == [1, None, 6]
    request = json.loads((export / "sample_request.json").read_text())
    assert request["signature_name"] == "serving_default"
    feed = {k: tf.constant(np.asarray(v), dtype=specs[k].dtype) for k, v in request["inputs"].items()}
    served = signature(**feed)["score"].numpy()
    assert served.shape == (len(request["inputs"]["item_id"]),) and served.shape[0] > 1
    model = keras.saving.load_model(Lake.from_config(trained).ranker("full", 0).model,
                                    compile=False)
    expected = np.asarray(model(per_sample_inputs(request["inputs"]))).reshape(-1)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    cli = subprocess.run([str(Path(sys.executable).parent / "saved_model_cli"), "show", "--dir",
                          str(export), "--all"], capture_output=True, text=True, check=True,
                         timeout=300)
    assert "signature_def['serving_default']" in cli.stdout
    assert "inputs['seq_semantic_ids'] tensor_info" in cli.stdout
    assert "outputs['score'] tensor_info" in cli.stdout


JAX_TRAIN = r'''
import json, sys
from saviorrec.config import Config
from tf_ranker.train import run_train
cfg = Config.model_validate(json.loads(sys.argv[1]))
print(json.dumps(run_train(cfg, variant="full", seed=1)["backend"]))
'''


def test_trained_under_jax_reloads_under_tensorflow(trained: Config) -> None:
    cfg = trained.with_overrides(ranker={"epochs": 1})
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", JAX_TRAIN, cfg.model_dump_json()], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lake = Lake.from_config(cfg)
    out = lake.ranker_dir("full", 1)
    assert json.loads((out / "meta.json").read_text())["backend"] == "jax"
    model = keras.saving.load_model(out / "model.keras", compile=False)  # here: TensorFlow
    assert keras.backend.backend() == "tensorflow"
    test, items = load_samples(lake.training("test")), load_items(lake.training_items)
    tf_scores = model.predict(RankerBatches(test, items, batch_size=64, with_labels=False), verbose=0)
    jax_scores = pq.read_table(out / "predictions_test.parquet")["score"].to_numpy()
    np.testing.assert_allclose(tf_scores.reshape(-1), jax_scores, atol=1e-5)


def test_evaluate_scores_the_synthetic_oracle_on_the_test_rows(trained: Config) -> None:
    """With Lake.oracle present (synthetic data), reference.oracle is the AUC of the true click
    probabilities joined to the test rows by (user_id, item_id, event_timestamp); a test row
    without its oracle row is an error naming the count."""
    from saviorrec.lake import write_table
    from saviorrec.schema import ORACLE

    lake = Lake.from_config(trained)
    test = pq.read_table(lake.training("test"),
                         columns=["user_id", "item_id", "event_timestamp", "label"])
    rng = np.random.default_rng(0)
    truth = np.clip(0.6 * test["label"].to_numpy() + rng.uniform(0, 0.5, test.num_rows), 0, 1)
    order = rng.permutation(test.num_rows)  # the join, not the row order, must match them up
    oracle = pa.table({"user_id": test["user_id"], "item_id": test["item_id"],
                       "event_timestamp": test["event_timestamp"],
                       "click_probability": truth}).take(order)
    try:
        write_table(oracle, lake.oracle, ORACLE)
        run_evaluate(trained, ["base", "full"])
        got = read_metrics(lake.metrics)["reference"]["oracle"]
        assert got["auc"] == pytest.approx(auc(test["label"].to_numpy(), truth))
        write_table(oracle.slice(0, oracle.num_rows - 3), lake.oracle, ORACLE)
        with pytest.raises(ValueError, match=r"3 of \d+ test rows have no oracle row"):
            run_evaluate(trained, ["base", "full"])
    finally:
        lake.oracle.unlink(missing_ok=True)


def test_eval_batch_size_is_a_multiple_of_the_training_batch() -> None:
    assert eval_batch_size(1024, 8192) == 8192
    assert eval_batch_size(1024, 5000) == 4096  # rounded down
    assert eval_batch_size(1024, 100) == 1024  # never under the training batch
    assert eval_batch_size(3, 8) == 6


def test_validation_batching_changes_no_figure(trained: Config, tmp_path: Path) -> None:
    """The fixture trained full seed 0 with validation and predictions in batches of 8,192
    (its batch_size 64 -> one batch); the same run with them in batches of 64 (many) gives the
    same history, validation AUC and test predictions."""
    lake = Lake.from_config(trained)
    first = json.loads((lake.ranker_dir("full", 0) / "meta.json").read_text())
    first_preds = pq.read_table(lake.ranker_dir("full", 0) / "predictions_test.parquet")
    cfg = trained.with_overrides(run={"root": str(tmp_path)}, ranker={"eval_batch_size": 64})
    shutil.copytree(lake.training_dir, Lake.from_config(cfg).training_dir)
    shutil.copytree(lake.rqvae_codebooks.parent, Lake.from_config(cfg).rqvae_codebooks.parent)
    again = run_train(cfg, variant="full", seed=0)
    for key in ("auc", "loss", "val_auc", "val_loss"):
        np.testing.assert_allclose(again["history"][key], first["history"][key], atol=1e-5)
    assert again["val_auc"] == pytest.approx(first["val_auc"], abs=1e-6)
    np.testing.assert_allclose(
        pq.read_table(Lake.from_config(cfg).ranker_dir("full", 0) / "predictions_test.parquet")
        ["score"].to_numpy(), first_preds["score"].to_numpy(), atol=1e-6)
