"""Train one ranker variant with one seed: ``run_train(cfg, variant="full", seed=0)``.

Adagrad, learning rate decaying exponentially from ranker.lr to ranker.lr_final over the planned
steps (paper 4.1.4: 0.01 -> 0.001, batch 1024), binary cross-entropy (eq. 17), early stopping
on validation AUC with the best weights restored. Runs on any Keras backend: TensorFlow on a
CPU, ``KERAS_BACKEND=jax`` on a GPU host without TensorFlow (the data path is numpy/pyarrow;
TensorBoard logs are written only where TensorFlow is importable).

``ranker.distribution: data_parallel`` (JAX only) trains on every visible device with
``keras.distribution.DataParallel``: variables replicated, each batch of ranker.batch_size
rows split evenly over the devices, so ranker.batch_size is the global batch and must be a
multiple of the device count. Every batch then has that one shape: the last, short batch of
each split is padded with zero-weight rows (RankerBatches ``pad_last``; the loss is averaged
over the sample weights, so the padding changes neither loss, gradients nor AUC) and the
padded predictions are dropped. The distribution and the dtype policy are set for the run only
and restored afterwards, so later runs in the same process start clean.

Writes Lake.ranker(variant, seed): the model (.keras), its meta (JSON), the test predictions
(schema.PREDICTIONS), the history (CSV), the best weights and TensorBoard logs. The meta of a
variant with MBA holds ``mba_level_importance`` (Fig. 3, :func:`mba_level_importance`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pyarrow as pa

from saviorrec.config import Config
from saviorrec.lake import Lake, RankerFiles, atomic_path, write_table
from saviorrec.metrics import auc, auc_by_bucket
from saviorrec.progress import fit_verbose
from saviorrec.ranker_inputs import USER_STAT_COUNTS
from saviorrec.schema import PREDICTIONS, SPLITS
from tf_ranker.batches import RankerBatches, data_placement
from tf_ranker.callbacks import (
    BestWeightsCheckpoint,
    EpochTensorBoard,
    StepProgbarLogger,
    StopOnNaN,
)
from tf_ranker.data import ItemLookup, Samples, load_items, load_samples, load_stats
from tf_ranker.item_tables import ItemTableRanker
from tf_ranker.layers.stat_transform import DEFAULT_COUNT_COLUMNS, fit_standardization
from tf_ranker.model_config import RankerModelConfig
from tf_ranker.models import SaviorRanker
from tf_ranker.packed import training_layout
from tf_ranker.variants import get_variant


def read_rqvae(lake: Lake) -> tuple[np.ndarray | None, str | None]:
    """(codebooks [L, K, latent] or None, rqvae_version or None) written by the encoder stage."""
    codebook_path, version_path = lake.rqvae_codebooks, lake.rqvae_version
    codebook = np.load(codebook_path) if codebook_path.is_file() else None
    version = json.loads(version_path.read_text())["rqvae_version"] if version_path.is_file() else None
    return codebook, version


def stat_moments(train: Samples) -> dict[str, list[float]]:
    """Mean and std of the log1p'd candidate and user statistics of the training split, per
    column (model_config.STAT_MOMENT_KEYS); sequence positions share the candidates' moments."""
    item_mean, item_std = fit_standardization(train.stats, DEFAULT_COUNT_COLUMNS)
    user_mean, user_std = fit_standardization(train.user_stats, USER_STAT_COUNTS)
    return {"item_mean": item_mean, "item_std": item_std,
            "user_mean": user_mean, "user_std": user_std}


def model_config(cfg: Config, variant: str, splits: list[Samples], items: ItemLookup,
                 codebook: np.ndarray | None, rqvae_version: str | None, *,
                 train: Samples | None = None) -> RankerModelConfig:
    """The model config, built once: vocabularies and code sizes from the data (``splits``),
    widths from cfg.ranker; with ranker.standardize_stats, the statistics' moments of ``train``
    (required then: the training split, never a split the model is evaluated on)."""
    r = cfg.ranker
    spec = get_variant(variant)
    width = int(items.semantic_ids.shape[1])
    if codebook is not None:
        levels, size, latent = (int(x) for x in codebook.shape)
        if levels > width:
            raise ValueError(f"RQ codebook has {levels} levels but items carry {width} semantic ids")
    else:
        if spec.uses_semantic_ids and spec.mba == "rq":
            raise FileNotFoundError(f"variant no_raw_mm needs the RQ codebooks: "
                                    f"{Lake.from_config(cfg).rqvae_codebooks} does not exist "
                                    "(run `saviorrec rqvae`)")
        levels, size, latent = max(width - 1, 1), int(items.semantic_ids.max(initial=0)) + 1, r.mba_dim
    if spec.uses_semantic_ids and rqvae_version is None:
        raise FileNotFoundError(f"variant {variant!r} reads semantic ids: the RQ-VAE version "
                                f"{Lake.from_config(cfg).rqvae_version} does not exist "
                                "(run `saviorrec rqvae`)")
    moments = None
    if r.standardize_stats:
        if train is None:
            raise ValueError("ranker.standardize_stats needs the training split (train=...) to "
                             "measure the statistics' mean and std")
        moments = stat_moments(train)
    max_user = max(int(s.user_id.max(initial=0)) for s in splits)
    max_item = max(max(int(s.item_id.max(initial=0)), int(s.seq_item_ids.max(initial=0)))
                   for s in splits)
    return RankerModelConfig(
        variant=variant,
        num_users=r.hash_buckets_user or max_user + 1,
        num_items=max(max_item + 1, items.num_rows),
        num_pv_buckets=len(cfg.stats.pv_buckets),
        embedding_dim=int(items.embedding.shape[1]),
        levels=levels,
        codebook_size=size,
        semantic_id_width=width,
        use_base_score=all(s.base_score is not None for s in splits),
        rqvae_version=rqvae_version,
        stat_moments=moments,
        # no_raw_mm copies the RQ codebook, so its width is the RQ latent width; full_mba32/16/8
        # fix their own (Table 5).
        mba_dim=latent if spec.mba == "rq" else (spec.mba_dim or r.mba_dim),
        id_dim=r.id_dim,
        stat_dim=r.stat_dim,
        heads=r.heads,
        attention_dim=r.attention_dim,
        mba_norm_epsilon=r.mba_norm_epsilon,
        dnn_units=r.dnn_units,
        feature_cross=r.feature_cross,
        simtier_bins=r.simtier_bins,
        attention_normalization=r.attention_normalization,
        id_dropout=r.id_dropout,
    )


def model_kwargs(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`model_config` as the dict the model saves (``RankerModelConfig.to_dict``)."""
    return model_config(*args, **kwargs).to_dict()


def learning_rate_schedule(cfg: Config, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """lr * (lr_final / lr) ** (step / total_steps): ranker.lr at the start, lr_final at the end."""
    r = cfg.ranker
    return keras.optimizers.schedules.ExponentialDecay(
        r.lr, decay_steps=max(total_steps, 1), decay_rate=r.lr_final / r.lr)


def eval_batch_size(batch_size: int, wanted: int) -> int:
    """ranker.eval_batch_size rounded down to a multiple of the training batch, at least one."""
    return max(1, wanted // batch_size) * batch_size


def make_optimizer(cfg: Config, total_steps: int) -> keras.optimizers.Adagrad:
    """Adagrad (paper 4.1.4) over :func:`learning_rate_schedule`, its accumulator starting at
    ranker.adagrad_initial_accumulator."""
    return keras.optimizers.Adagrad(
        learning_rate=learning_rate_schedule(cfg, total_steps),
        initial_accumulator_value=cfg.ranker.adagrad_initial_accumulator)


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """model.save to a temporary ``.keras`` sibling, then rename (Keras wants the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_predictions(path: Path, samples: Samples, scores: np.ndarray) -> None:
    table = pa.table({
        "user_id": pa.array(samples.user_id, pa.int64()),
        "item_id": pa.array(samples.item_id, pa.int64()),
        "label": pa.array(samples.label, pa.int64()),
        "eval_pv_bucket": pa.array(samples.eval_pv_bucket, pa.int64()),
        "score": pa.array(scores.astype("float32"), pa.float32()),
    })
    write_table(table, path, PREDICTIONS)


class TrainingCollapsed(RuntimeError):
    """Training ended in a model that cannot rank: non-finite, constant or saturated validation
    scores."""


SATURATED = 1e-6  # a score this close to 0 or 1 is a saturated sigmoid, not a CTR estimate


def check_not_collapsed(scores: np.ndarray, history: dict[str, list[float]], *, variant: str,
                        seed: int) -> None:
    """Raise TrainingCollapsed when the validation scores are not finite, all equal, or mostly
    saturated (more than half within SATURATED of 0 or 1): steps too large drive the sigmoid to
    its ends. MovieLens's full model under an Adagrad accumulator of 0.0001 ends at one score
    with a loss of 7.3; under lr 0.1 it ends with 11 distinct scores, all within 1e-6 of 0 or 1,
    a validation loss of 8.7 and a validation AUC of 0.50. Their metrics would mean nothing."""
    finite = np.isfinite(scores)
    if not finite.all():
        what = f"{int((~finite).sum())} of {scores.size} validation scores are not finite"
    elif np.ptp(scores) <= 1e-6:
        what = f"every validation score is {scores[0]:.6g}"
    elif (saturated := float(np.mean(np.minimum(scores, 1.0 - scores) < SATURATED))) > 0.5:
        what = f"{saturated:.0%} of the validation scores are within {SATURATED:g} of 0 or 1"
    else:
        return
    losses = ", ".join(f"{x:.4g}" for x in history.get("loss", []))
    raise TrainingCollapsed(
        f"{variant} seed {seed}: training collapsed, {what} (training loss by epoch: {losses}); "
        "the model, predictions and meta were not written. Lower ranker.lr or raise "
        "ranker.adagrad_initial_accumulator.")


def _callbacks(out: RankerFiles, patience: int) -> list[keras.callbacks.Callback]:
    """Epoch-end callbacks only: a per-batch hook turns off asynchronous dispatch
    (tf_ranker/callbacks.py)."""
    callbacks: list[keras.callbacks.Callback] = [
        StopOnNaN(),  # no more epochs on NaN: check_not_collapsed reports
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                      restore_best_weights=True, verbose=1),
        # Weights only: the model that trains may be the ItemTableRanker wrapper (not saved).
        BestWeightsCheckpoint(str(out.best_weights), monitor="val_auc", mode="max"),
        keras.callbacks.CSVLogger(str(out.history)),
        StepProgbarLogger(),  # Keras's bar without "72/70" (steps_per_execution)
    ]
    # Keras writes TensorBoard events through tf.summary, which needs both packages.
    if all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard")):
        callbacks.append(EpochTensorBoard(str(out.logs)))
    return callbacks


def train_item_ids(train: Samples) -> np.ndarray:
    """Every item id the training split reads (candidates and sequence items), padding left out."""
    ids = np.unique(np.concatenate([train.item_id, train.seq_item_ids.reshape(-1)]))
    return ids[ids > 0]


def mba_level_importance(model: SaviorRanker, train: Samples,
                         items: ItemLookup) -> dict[str, list[float] | list[int]]:
    """Fig. 3 of the trained model: per MBA level, the mean L2 norm of the codebook rows of the
    items seen in training (candidates and sequence items) and of the fusion weights that read
    the level (ModalBehaviorAlignment.level_importance)."""
    ids = train_item_ids(train)
    ids = ids[ids < items.num_rows]  # no padding; ids beyond the table read row 0
    return model.mba.level_importance(items.semantic_ids[ids])


def make_distribution(cfg: Config) -> keras.distribution.Distribution | None:
    """None for ``ranker.distribution: none``; DataParallel over all visible devices otherwise."""
    r = cfg.ranker
    if r.distribution == "none":
        return None
    if keras.backend.backend() != "jax":
        raise ValueError(f"ranker.distribution={r.distribution!r} needs KERAS_BACKEND=jax "
                         f"(keras.distribution), got {keras.backend.backend()!r}")
    distribution = keras.distribution.DataParallel()
    devices = int(distribution.device_mesh.devices.size)
    if r.batch_size % devices:
        raise ValueError(f"ranker.batch_size={r.batch_size} (the global batch) is not divisible by "
                         f"the {devices} devices of ranker.distribution=data_parallel: use a "
                         f"multiple of {devices}, e.g. {devices * max(r.batch_size // devices, 1)}")
    return distribution


@contextlib.contextmanager
def _run_scope(cfg: Config, distribution: keras.distribution.Distribution | None) -> Iterator[None]:
    """Distribution and dtype policy for one run, restored on exit (even on an error)."""
    policy = keras.config.dtype_policy()
    if cfg.ranker.mixed_precision:
        keras.config.set_dtype_policy(
            "mixed_float16" if keras.backend.backend() == "tensorflow" else "mixed_bfloat16")
    try:
        with distribution.scope() if distribution is not None else contextlib.nullcontext():
            yield
    finally:
        keras.config.set_dtype_policy(policy)


class CappedBatches(RankerBatches):
    """Training batches of which each epoch serves the first ``max_batches`` of its shuffle
    (ranker.max_steps_per_epoch; 0: all). Keras's ``fit(steps_per_epoch=...)`` would instead
    go on where the last epoch stopped and run out of batches."""

    max_batches = 0

    def __len__(self) -> int:
        batches = super().__len__()
        return min(batches, self.max_batches) if self.max_batches else batches


def run_train(cfg: Config, *, variant: str, seed: int) -> dict[str, Any]:
    """Train ``variant`` with ``seed``; returns (and writes) the run's meta."""
    distribution = make_distribution(cfg)
    with _run_scope(cfg, distribution):
        return _train(cfg, variant=variant, seed=seed, distribution=distribution)


def _train(cfg: Config, *, variant: str, seed: int,
           distribution: keras.distribution.Distribution | None) -> dict[str, Any]:
    r, lake = cfg.ranker, Lake.from_config(cfg)
    spec = get_variant(variant)
    keras.utils.set_random_seed(seed)
    devices = 1 if distribution is None else int(distribution.device_mesh.devices.size)
    pad = distribution is not None
    stats = load_stats(lake.training_stats)  # one table for the three splits
    train, valid, test = (load_samples(lake.training(s), stats) for s in SPLITS)
    items = load_items(lake.training_items)
    codebook, rqvae_version = read_rqvae(lake)
    config = model_config(cfg, variant, [train, valid, test], items, codebook, rqvae_version,
                          train=train)
    model = SaviorRanker(config)
    if r.unseen_item_ids == "shared":
        model.set_known_items(train_item_ids(train))
    if spec.mba == "rq":
        model.set_rq_codebook(codebook)  # type: ignore[arg-type]

    base = config.use_base_score
    on_device = r.item_tables == "device"
    # The model that trains: the ranker itself, or the ranker behind on-device item tables.
    packing = training_layout(r, train, base_score=base)
    fitted = ItemTableRanker(model, items, stats, packing) if on_device else model
    batch_kw = {"batch_size": r.batch_size, "use_base_score": base, "pad_last": pad,
                "gather_items": not on_device, "packed": packing, "workers": r.input_workers,
                "use_multiprocessing": False, "place": data_placement(distribution)}
    train_batches = CappedBatches(train, items, shuffle=True, seed=seed, **batch_kw)
    train_batches.max_batches = r.max_steps_per_epoch
    eval_kw = {**batch_kw, "batch_size": eval_batch_size(r.batch_size, r.eval_batch_size)}
    valid_batches = RankerBatches(valid, items, **eval_kw)
    # Mean over the sample weights: the zero-weight padding rows of pad_last do not count.
    loss = keras.losses.BinaryCrossentropy(reduction="mean_with_sample_weight")
    # Keras's torch backend runs one step per call.
    spe = 1 if keras.backend.backend() == "torch" else r.steps_per_execution
    optimizer = make_optimizer(cfg, len(train_batches) * r.epochs)
    fitted.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.AUC(name="auc")],
                   steps_per_execution=spe)
    out = lake.ranker(variant, seed)
    out.root.mkdir(parents=True, exist_ok=True)
    history = fitted.fit(train_batches, validation_data=valid_batches, epochs=r.epochs,
                         callbacks=_callbacks(out, r.early_stopping_patience), verbose=fit_verbose())

    def predict(samples: Samples, batches: RankerBatches | None = None) -> np.ndarray:
        # predict reads the inputs of (inputs, labels[, weights]) batches: the validation
        # batches of fit serve again (their split is not packed a second time)
        if batches is None:
            batches = RankerBatches(samples, items, with_labels=False, **eval_kw)
        scores = np.asarray(fitted.predict(batches, verbose=0), dtype="float64").reshape(-1)
        return scores[:len(samples)]  # without pad_last's filling

    valid_scores = predict(valid, valid_batches)
    check_not_collapsed(valid_scores, history.history, variant=variant, seed=seed)
    test_scores = predict(test)
    val_aucs = history.history.get("val_auc", [])
    importance = mba_level_importance(model, train, items) if spec.mba is not None else None
    meta = {
        "variant": variant,
        "seed": seed,
        "rqvae_version": rqvae_version,
        "backend": keras.backend.backend(),
        "distribution": r.distribution,
        "devices": devices,
        "global_batch_size": r.batch_size,
        "steps_per_epoch": len(train_batches),
        "item_tables": r.item_tables,
        "epochs": len(val_aucs),
        "best_epoch": int(np.argmax(val_aucs)) + 1 if val_aucs else 0,
        "val_auc": auc(valid.label, valid_scores),  # best weights, sklearn on all valid rows
        # per evaluation PV bucket: settings for cold items are chosen on these, never on test;
        # null where a bucket holds one class (no AUC), as in metrics.json
        "val_auc_by_bucket": {k: (None if np.isnan(v) else v) for k, v in auc_by_bucket(
            valid.label, valid_scores, valid.eval_pv_bucket, cfg.stats.bucket_labels()).items()},
        "test_auc": auc(test.label, test_scores),
        "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
        "model_config": config.to_dict(),
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
    }
    if importance is not None:
        meta["mba_level_importance"] = importance
    save_model_atomic(model, out.model)
    _write_predictions(out.predictions, test, test_scores)
    with atomic_path(out.meta) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta
