"""Training and inference throughput of the SaviorRanker, against FuxiCTR's DIN (issue 9).

DIAGNOSTICS: every mode here runs without run_train's callbacks, validation or checkpoint, so
no figure of this script is what ``saviorrec train`` delivers; that is benchmarks/train_speed.py
(docs/performance.md quotes it).

What is measured, for each batch size (defaults: the paper's sizes d=64, L=8, K=2048, 8 heads,
sequences of 50, batches of 1024 and 8192):

- ``pipeline``: the host input pipeline alone. Batches are built from numpy arrays the way the
  ranker's training data arrive: per-sample columns (ids, statistics, the behaviour sequence)
  sliced in order, and each candidate's and sequence item's embedding and semantic ids gathered
  from one item table (TRAINING_ITEMS) at batch time.
- ``train_fit``: ``model.fit`` over that pipeline (a ``keras.utils.PyDataset``): Keras's training
  loop without callbacks, so data waiting and device compute together. Its first call (``warmup`` steps) is timed
  apart as the compile time.
- ``train_step``: the compiled train step alone on batches already on the device (no pipeline).
- ``predict_step``: the compiled inference step on device-resident batches.
- ``data_wait_ms`` = fit ms/batch - step ms/batch: the time the loop waits for data.

FuxiCTR's DIN (its model zoo, PyTorch, run as FuxiCTR runs it: eager) is measured the same way at
matched sizes: embedding 64 per feature, sequences of 50, the ranker's DNN widths.

``--profile`` adds variants at the first batch size, to locate a bottleneck: the model without
MBA and without multimodal input, bf16 mixed precision, ``steps_per_execution``, a threaded
pipeline, prebuilt host batches (H2D copy without the gather), and the forward / backward split.

``--data-parallel`` measures multi-device scaling instead (JAX only): for each device count k of
``--devices`` (default: 1 and all N visible devices), ``train_fit`` and ``train_step`` of the
full model with a global batch of k x the per-device batch (``--batch-sizes``, default 1024),
k = 1 without a distribution (plain single-device training) and k > 1 under
``keras.distribution.DataParallel`` over the first k devices, as ``ranker.distribution:
data_parallel`` trains. The JSON's ``data_parallel`` section holds samples/s per device count
and the scaling efficiency samples/s(k) / (k x samples/s(1)).

Run from the repository root: ``python benchmarks/ranker_throughput.py --backend jax``; the
torch backend in a separate process (``--backend torch``). Results: a JSON file (``--out``) that
is rewritten after every measurement, so a run cut short by a timeout keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import _bench_common as common
import numpy as np

DEFAULT_OUT = common.REPO_ROOT / "benchmarks" / "results" / "ranker_throughput.json"
TARGET_TRAIN_SAMPLES_PER_S = 600_000  # at batch 1024, full model (issue 9)
TARGET_RATIO_VS_DIN = 2.0

# FuxiCTR imports these at module level (metrics: polars, scikit-learn; preprocessing: ray,
# polars, h5py; DIN.py: pandas.core.common.flatten, unused) but never calls them on the path
# measured here (model construction, forward, backward, optimizer step). The GPU host lacks most
# of them; they are stubbed in THIS process only, and the results list which ones were.
FUXICTR_IMPORT_ONLY_MODULES = (
    "pandas", "pandas.core.common", "polars", "sklearn", "sklearn.metrics",
    "sklearn.preprocessing", "h5py", "ray", "ray.data", "ray.data.datasource",
    "ray.data.datasource.filename_provider", "tqdm",
)
# The project's modules import pyarrow (parquet I/O; schema types built at import) and
# tf_ranker.train imports saviorrec.metrics (scikit-learn's roc_auc_score); the benchmark builds
# its data in memory and evaluates nothing, so a host without them gets stubs in this process.
CONTRACT_IMPORT_ONLY_MODULES = ("pyarrow", "pyarrow.compute", "pyarrow.parquet", "sklearn",
                                "sklearn.metrics")


# ---- sizes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Data sizes; the model's widths come from the config's ``ranker`` section."""

    embedding_dim: int  # d of the multimodal embedding z
    levels: int  # L semantic-id levels
    codebook_size: int  # K codes per level
    seq_len: int
    num_users: int
    num_items: int  # rows of the item table (row 0 = padding)
    pool_samples: int  # distinct samples the pipeline cycles through (a multiple of the batch)
    ranker_overrides: tuple[tuple[str, Any], ...] = ()  # config ranker.* overrides (--tiny)

    def config(self) -> Any:
        from saviorrec.config import Config

        return Config().with_overrides(ranker=dict(self.ranker_overrides))


def paper_sizes() -> Sizes:
    """Paper 4.1.4: d=64, L=8, K=2048; 8 heads and batch 1024 are the config's defaults."""
    from saviorrec.config import SequenceConfig

    return Sizes(embedding_dim=64, levels=8, codebook_size=2048,
                 seq_len=SequenceConfig().max_len, num_users=100_000, num_items=200_000,
                 pool_samples=65_536)


def tiny_sizes() -> Sizes:
    return Sizes(embedding_dim=16, levels=2, codebook_size=32, seq_len=8, num_users=100,
                 num_items=500, pool_samples=512,
                 ranker_overrides=(("heads", 2), ("attention_dim", 16), ("mba_dim", 16),
                                   ("id_dim", 8), ("stat_dim", 8), ("dnn_units", (16, 8))))


# ---- host data: the project's Samples + ItemLookup, and its PyDataset ---------------------
def make_data(sizes: Sizes, num_pv_buckets: int, seed: int = 0) -> tuple[Any, Any]:
    """(tf_ranker.data.Samples, tf_ranker.data.ItemLookup) of random values, real shapes."""
    from tf_ranker.data import ItemLookup, Samples, StatsLookup
    from tf_ranker.synthetic import synthetic_inputs

    # The ranker's own generator gives ids and statistics of the real shapes and dtypes; its
    # per-sample embeddings are dropped (made at width 1 to save memory) for an item table.
    x, labels = synthetic_inputs(
        batch_size=sizes.pool_samples, seq_len=sizes.seq_len, embedding_dim=1, levels=1,
        codebook_size=sizes.codebook_size, num_users=sizes.num_users,
        num_items=sizes.num_items, num_pv_buckets=num_pv_buckets, seed=seed,
    )
    stats_table, seq_rows = StatsLookup.dense(x["seq_stats"], x["seq_pv_bucket"])
    samples = Samples(
        user_id=x["user_id"], user_stats=x["user_stats"], item_id=x["item_id"],
        label=labels[:, 0].astype("int64"),
        eval_pv_bucket=x["item_pv_bucket"], stats=x["item_stats"], pv_bucket=x["item_pv_bucket"],
        seq_item_ids=x["seq_item_ids"], seq_stats_row=seq_rows, stats_table=stats_table,
    )
    rng = np.random.default_rng(seed + 1)
    embedding = rng.standard_normal((sizes.num_items, sizes.embedding_dim), dtype="float32")
    codes = rng.integers(0, sizes.codebook_size, (sizes.num_items, sizes.levels + 1))
    codes[:, -1] = 0  # disambiguation index
    embedding[0], codes[0] = 0.0, 0  # padding row
    return samples, ItemLookup(embedding, codes.astype("int64"))


def make_batches(samples: Any, items: Any, batch_size: int, length: int, *,
                 workers: int = 1, gather_items: bool = True, packed: Any = None,
                 pad_last: bool = False, place: Any = None) -> Any:
    """The training loop's PyDataset (tf_ranker.batches.RankerBatches: shuffled rows, item
    features gathered from the lookup by tf_ranker.data.make_inputs), looped to ``length``
    batches so a timed ``fit`` never runs out of data."""
    from tf_ranker.batches import RankerBatches

    class LoopedBatches(RankerBatches):
        def __len__(self) -> int:
            return length

        def __getitem__(self, index: int) -> Any:
            return super().__getitem__(index % super().__len__())

    if len(samples) % batch_size:
        raise ValueError(f"pool of {len(samples)} samples is not a multiple of {batch_size}")
    return LoopedBatches(samples, items, batch_size=batch_size, shuffle=True, seed=0,
                         gather_items=gather_items, packed=packed, workers=workers,
                         pad_last=pad_last, place=place,
                         use_multiprocessing=False,
                         max_queue_size=max(2 * workers, 4))


def make_cached_batches(batches: list[Any], length: int) -> Any:
    """Prebuilt host batches, cycled: ``fit`` without the gather (copy to device only)."""
    import keras

    class Cached(keras.utils.PyDataset):
        def __len__(self) -> int:
            return length

        def __getitem__(self, index: int) -> Any:
            return batches[index % len(batches)]

    return Cached()


# ---- backends ------------------------------------------------------------------------------
class KerasRunner:
    """Compiled train / predict functions of one compiled Keras model, on device batches."""

    def __init__(self, model: Any, backend: str, distribution: Any = None) -> None:
        self.model, self.backend, self.distribution = model, backend, distribution
        if backend == "jax":
            import jax

            self._jax = jax
        else:
            import torch

            self._torch = torch
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def to_device(self, batch: Any) -> Any:
        if self.backend == "jax" and self.distribution is not None:
            # Split along the batch axis over the mesh, as fit's distributed iterator does.
            return tree_map(lambda a: self._jax.device_put(
                a, self.distribution.get_data_layout(a.shape).backend_layout), batch)
        if self.backend == "jax":
            return self._jax.device_put(batch)
        torch = self._torch
        return tree_map(lambda a: torch.as_tensor(a).to(self.device), batch)

    def sync(self, out: Any) -> None:
        if self.backend == "jax":
            self._jax.block_until_ready(out)
        elif self.device.type == "cuda":
            self._torch.cuda.synchronize()

    # The train/predict functions are the ones ``fit``/``predict`` use (compiled by the first
    # ``fit``); called here directly so that no data adapter or callback runs between steps.
    def train_stepper(self, device_batches: list[Any]) -> tuple[Callable[[int], Any], Callable]:
        model = self.model
        model.make_train_function()
        batches = common.cycle(device_batches)
        if self.backend == "torch":
            return (lambda i: model.train_function([next(batches)])), (lambda: None)
        state = [
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        ]
        holder = {"state": tuple(state)}

        def step(i: int) -> Any:
            logs, holder["state"] = model.train_function(holder["state"], batches)
            return logs

        def finish() -> None:  # write the (donated) state back into the model variables
            groups = (model.trainable_variables, model.non_trainable_variables,
                      model.optimizer.variables, model.metrics_variables)
            for variables, values in zip(groups, holder["state"], strict=True):
                for variable, value in zip(variables, values, strict=True):
                    variable.assign(value)

        return step, finish

    def predict_stepper(self, device_xs: list[Any]) -> tuple[Callable[[int], Any], Callable]:
        model = self.model
        model.make_predict_function()
        xs = common.cycle([(x,) for x in device_xs])
        if self.backend == "torch":
            return (lambda i: model.predict_function([next(xs)])), (lambda: None)
        holder = {"state": ([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables])}

        def step(i: int) -> Any:
            out, holder["state"] = model.predict_function(holder["state"], xs)
            return out

        def finish() -> None:
            groups = (model.trainable_variables, model.non_trainable_variables)
            for variables, values in zip(groups, holder["state"], strict=True):
                for variable, value in zip(variables, values, strict=True):
                    variable.assign(value)

        return step, finish

    def part_steppers(self, device_batch: Any) -> dict[str, Callable[[int], Any]]:
        """Forward alone and forward + backward (no optimizer), for the compute split."""
        import keras

        model = self.model
        x, y = device_batch
        if self.backend == "jax":
            jax = self._jax
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]

            def forward(tv: Any, ntv: Any, x: Any) -> Any:
                return model.stateless_call(tv, ntv, x, training=True)[0]

            def loss(tv: Any, ntv: Any, x: Any, y: Any) -> Any:
                pred = forward(tv, ntv, x)
                return keras.ops.mean(keras.losses.binary_crossentropy(y, pred))

            fwd, grad = jax.jit(forward), jax.jit(jax.grad(loss))
            return {"forward": lambda i: fwd(tv, ntv, x),
                    "forward_backward": lambda i: grad(tv, ntv, x, y)}
        torch = self._torch

        def forward_backward(i: int) -> Any:
            model.zero_grad()
            pred = model(x, training=True)
            loss = torch.nn.functional.binary_cross_entropy(pred, y)
            loss.backward()
            return loss

        return {"forward": lambda i: model(x, training=True), "forward_backward": forward_backward}


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, v) for v in tree)
    return fn(tree)


@dataclass(frozen=True)
class Data:
    """Everything a suite needs: config, sizes and the host data."""

    cfg: Any  # saviorrec.config.Config
    sizes: Sizes
    samples: Any  # tf_ranker.data.Samples
    items: Any  # tf_ranker.data.ItemLookup


def build_ranker(data: Data, variant: str, *, jit_compile: bool, steps_per_execution: int = 1,
                 auc_metric: bool = True, item_tables: bool = False) -> Any:
    """The model and compile settings of tf_ranker.train.run_train (kept in step with it);
    ``item_tables``: behind tf_ranker.item_tables.ItemTableRanker (ranker.item_tables=device)."""
    import keras

    from tf_ranker.item_tables import ItemTableRanker
    from tf_ranker.models import SaviorRanker
    from tf_ranker.train import model_kwargs

    r = data.cfg.ranker
    model = SaviorRanker(**model_kwargs(data.cfg, variant, [data.samples], data.items,
                                        None, "benchmark"))
    if item_tables:
        model = ItemTableRanker(model, data.items, data.samples.stats_table, packing(data))
    steps_per_epoch = max(len(data.samples) // r.batch_size, 1)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        r.lr, decay_steps=steps_per_epoch * r.epochs, decay_rate=r.lr_final / r.lr)
    metrics = [keras.metrics.AUC(name="auc")] if auc_metric else []
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate=schedule),
                  loss=keras.losses.BinaryCrossentropy(), metrics=metrics,
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    return model


def packing(data: Data) -> Any:
    """The packed-input layout tf_ranker.train uses (None when off)."""
    from tf_ranker.packed import training_layout

    return training_layout(data.cfg.ranker, data.samples)


# ---- measurements --------------------------------------------------------------------------
class Recorder:
    """Collects result records and rewrites the JSON after each one."""

    def __init__(self, out: Path, payload: dict[str, Any]) -> None:
        self.out, self.payload = out, payload
        payload.setdefault("results", [])

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        self.payload["results"].append(record)
        self.flush()
        line = (f"[{record.get('model')}/{record.get('variant')}/{record.get('backend')}"
                f"/{record.get('precision')}/{record.get('tag') or '-'}] "
                f"{record.get('measure')} B={record.get('batch_size')}")
        if "error" in record:
            print(f"{line}: ERROR {record['error']}", flush=True)
        else:
            extra = f", first call {record['first_call_s']:.2f} s" if "first_call_s" in record else ""
            print(f"{line}: {record['samples_per_s']:,.0f} samples/s "
                  f"({record['ms_per_batch']:.3f} ms/batch{extra})", flush=True)
        return record

    def flush(self) -> None:
        common.write_json_atomic(self.out, self.payload)


def measure(rec: Recorder, base: dict[str, Any], measure_name: str,
            fn: Callable[[], common.Timing]) -> dict[str, Any]:
    """Run one measurement; an exception becomes an ``error`` record, not a crash."""
    record = {**base, "measure": measure_name}
    try:
        timing = fn()
    except Exception as e:  # noqa: BLE001 - a failed variant must not lose the other figures
        traceback.print_exc()
        return rec.add({**record, "error": f"{type(e).__name__}: {e}"[:2000]})
    return rec.add({**record, **timing.as_dict()})


def time_fit(model: Any, make_dataset: Callable[[int], Any], *, batch_size: int, steps: int,
             warmup: int) -> common.Timing:
    """``model.fit`` over a PyDataset: a warm-up call (compiles), then a timed call."""
    spe = int(getattr(model, "steps_per_execution", 1) or 1)
    steps = max(spe, steps // spe * spe)
    warmup = max(spe, warmup // spe * spe)
    warm_ds, timed_ds = make_dataset(warmup), make_dataset(steps)
    start = time.perf_counter()
    model.fit(warm_ds, epochs=1, steps_per_epoch=warmup, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(timed_ds, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - start
    timing = common.Timing(batch_size, steps, seconds, first_call_s=first)
    timing.extra["steps_per_execution"] = spe
    timing.extra["pipeline_workers"] = int(getattr(timed_ds, "workers", 1) or 1)
    # The warm-up call ran `warmup` steps: subtract them all, not one, for the compile estimate.
    timing.extra["compile_s_est"] = round(max(first - warmup * seconds / steps, 0.0), 4)
    return timing


def time_pipeline(batches: Any, batch_size: int, steps: int) -> common.Timing:
    """Batch construction alone: ``batches[i]`` (tf_ranker.data.make_inputs) on the host."""
    batches[0]
    start = time.perf_counter()
    for i in range(steps):
        batches[i + 1]
    return common.Timing(batch_size, steps, time.perf_counter() - start)


def run_ranker_suite(rec: Recorder, args: argparse.Namespace, data: Data, *, variant: str,
                     precision: str, batch_size: int, jit_compile: bool,
                     measures: tuple[str, ...], steps_per_execution: int = 1,
                     auc_metric: bool = True, tag: str = "") -> dict[str, dict[str, Any]]:
    """Build one model; run ``measures`` on it (one compile shared by all of them)."""
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        model = build_ranker(data, variant, jit_compile=jit_compile,
                             steps_per_execution=steps_per_execution, auc_metric=auc_metric)
    finally:
        keras.config.set_dtype_policy("float32")
    runner = KerasRunner(model, args.backend)
    base = {"model": "SaviorRanker", "variant": variant, "backend": args.backend,
            "precision": precision, "batch_size": batch_size, "jit_compile": jit_compile,
            "tag": tag or None, "auc_metric": auc_metric, "params": int(model.count_params())}
    kw = {"batch_size": batch_size, "steps": args.steps, "warmup": args.warmup}

    def dataset(workers: int = 1) -> Callable[[int], Any]:
        return lambda n: make_batches(data.samples, data.items, batch_size, n, workers=workers)

    host = dataset()(1 << 30)
    out: dict[str, dict[str, Any]] = {}
    if "pipeline" in measures:
        out["pipeline"] = measure(rec, {**base, "model": "host_pipeline"}, "pipeline",
                                  lambda: time_pipeline(host, batch_size, args.steps))
    if "train_fit" in measures:
        out["train_fit"] = measure(rec, base, "train_fit",
                                   lambda: time_fit(model, dataset(), **kw))
    if "fit_device_tables" in measures:
        # What tf_ranker.train does by default: item tables on the device (the host sends ids),
        # batches built ahead by args.workers threads. A second model: its own compile.
        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
        try:
            tabled = build_ranker(data, variant, jit_compile=jit_compile,
                                  steps_per_execution=args.fit_spe or steps_per_execution,
                                  auc_metric=auc_metric, item_tables=True)
        finally:
            keras.config.set_dtype_policy("float32")
        out["train_fit_device_tables"] = measure(
            rec, {**base, "tag": f"device_item_tables_workers{args.workers}"
                  + (f"_spe{args.fit_spe}" if args.fit_spe else "")
                  + ("_packed" if packing(data) else "")}, "train_fit",
            lambda: time_fit(tabled, lambda n: make_batches(
                data.samples, data.items, batch_size, n, workers=args.workers,
                gather_items=False, packed=packing(data)), **kw))
        if args.diagnose_fit:
            # Where fit's time goes, on the same compiled model: the same fit over 8 prebuilt
            # id batches cycled (no gather on the host), then over those batches already on
            # the device (no gather, no host-to-device copy): what is left is Keras's own loop.
            ids = make_batches(data.samples, data.items, batch_size, 1 << 30, gather_items=False,
                               packed=packing(data))
            prebuilt = [ids[i] for i in range(min(8, len(data.samples) // batch_size))]
            on_device = [KerasRunner(tabled, args.backend).to_device(b) for b in prebuilt]
            for kind, cached in (("prebuilt_host_batches", prebuilt),
                                 ("prebuilt_device_batches", on_device)):
                out[f"train_fit_device_tables_{kind}"] = measure(
                    rec, {**base, "tag": f"device_item_tables_{kind}"
                          + (f"_spe{args.fit_spe}" if args.fit_spe else "")}, "train_fit",
                    lambda cached=cached: time_fit(
                        tabled, lambda n: make_cached_batches(cached, n), **kw))
    if "fit_workers" in measures:
        out["train_fit_workers"] = measure(
            rec, {**base, "tag": f"workers{args.workers}"}, "train_fit",
            lambda: time_fit(model, dataset(args.workers), **kw))
    if "fit_prebuilt" in measures:
        cached = [host[i] for i in range(min(8, len(data.samples) // batch_size))]
        out["train_fit_prebuilt"] = measure(
            rec, {**base, "tag": "prebuilt_host_batches"}, "train_fit",
            lambda: time_fit(model, lambda n: make_cached_batches(cached, n), **kw))
    dev = [runner.to_device(host[i]) for i in range(args.device_batches)]
    if "train_step" in measures:
        if "train_fit" not in out:  # the first fit builds the optimizer and compiles
            model.fit(dataset()(1), epochs=1, steps_per_epoch=1, verbose=0)
        step, finish = runner.train_stepper(dev)
        out["train_step"] = measure(rec, base, "train_step", lambda: common.time_loop(
            step, sync=runner.sync, **kw))
        finish()
    if "predict_step" in measures:
        step, finish = runner.predict_stepper([x for x, _ in dev])
        out["predict_step"] = measure(rec, base, "predict_step", lambda: common.time_loop(
            step, sync=runner.sync, **kw))
        finish()
    if "parts" in measures:
        for name, part in runner.part_steppers(dev[0]).items():
            out[name] = measure(rec, {**base, "tag": "parts"}, name,
                                lambda part=part: common.time_loop(part, sync=runner.sync, **kw))
    return out


def run_data_parallel(rec: Recorder, args: argparse.Namespace, data: Data,
                      device_counts: list[int]) -> dict[str, Any]:
    """Training samples/s of ``args.variant`` per device count and per-device batch; returns the
    JSON's ``data_parallel`` section (also rewritten into the payload after each measurement)."""
    import keras

    section: dict[str, Any] = {
        "devices_visible": len(keras.distribution.list_devices()),
        "device_counts": device_counts, "per_device_batch_sizes": args.batch_sizes,
        "distribution_at_1": "none", "distribution_above_1": "keras.distribution.DataParallel",
        "results": [],
    }
    rec.payload["data_parallel"] = section
    for per_device in args.batch_sizes:
        by_count: dict[int, dict[str, float | None]] = {}
        for k in device_counts:
            by_count[k] = time_devices(rec, args, data, k, per_device)
            section["results"] = [r for r in section["results"]
                                  if r["per_device_batch"] != per_device]
            section["results"].append(scaling_summary(per_device, by_count))
            rec.flush()
    return section


def time_devices(rec: Recorder, args: argparse.Namespace, data: Data, k: int,
                 per_device: int) -> dict[str, float | None]:
    """train_fit and train_step on the first ``k`` devices, global batch ``k x per_device``."""
    import keras

    from tf_ranker.batches import data_placement

    distribution = None
    if k > 1:
        distribution = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices()[:k])
    global_batch = per_device * k
    base = {"model": "SaviorRanker", "variant": args.variant, "backend": args.backend,
            "precision": "float32", "batch_size": global_batch, "jit_compile": True,
            "tag": f"devices{k}", "devices": k, "per_device_batch": per_device}
    kw = {"batch_size": global_batch, "steps": args.steps, "warmup": args.warmup}

    def dataset(n: int) -> Any:
        return make_batches(data.samples, data.items, global_batch, n)

    with distribution.scope() if distribution is not None else contextlib.nullcontext():
        model = build_ranker(data, args.variant, jit_compile=True)
        runner = KerasRunner(model, args.backend, distribution)
        base["params"] = int(model.count_params())
        fit = None if args.skip_host_gather else measure(
            rec, base, "train_fit", lambda: time_fit(model, dataset, **kw))
        # The training default: item tables on the devices (replicated), ids from the host,
        # the config's steps_per_execution, and under a distribution the sample weights that
        # train.py's pad_last batches carry.
        spe = args.fit_spe or data.cfg.ranker.steps_per_execution
        layout = packing(data)
        tabled = build_ranker(data, args.variant, jit_compile=True, item_tables=True,
                              steps_per_execution=spe)
        fit_tables = measure(
            rec, {**base, "tag": f"devices{k}_device_item_tables_workers{args.workers}_spe{spe}"
                  + ("_packed" if layout else "")},
            "train_fit", lambda: time_fit(tabled, lambda n: make_batches(
                data.samples, data.items, global_batch, n, workers=args.workers,
                gather_items=False, packed=layout, pad_last=k > 1,
                place=data_placement(distribution)), **kw))

        def time_step() -> common.Timing:
            if fit is None:  # the fit builds the optimizer; without it, one step does
                model.fit(dataset(1), epochs=1, steps_per_epoch=1, verbose=0)
            host = dataset(1 << 30)
            batches = [runner.to_device(host[i]) for i in range(args.device_batches)]
            step, finish = runner.train_stepper(batches)
            timing = common.time_loop(step, sync=runner.sync, **kw)
            finish()
            # Where the work ran: devices holding a batch (split) and a variable (replicated).
            timing.extra["batch_devices"] = len(batches[0][1].sharding.device_set)
            timing.extra["variable_devices"] = len(
                model.trainable_variables[0].value.sharding.device_set)
            return timing

        step = measure(rec, base, "train_step", time_step)
    return {"train_fit": _sps(fit), "train_fit_device_tables": _sps(fit_tables),
            "train_step": _sps(step)}


def scaling_summary(per_device: int, by_count: dict[int, dict[str, float | None]]) -> dict[str, Any]:
    """samples/s per device count and efficiency samples/s(k) / (k x samples/s(1)) per measure."""
    out: dict[str, Any] = {"per_device_batch": per_device}
    for key in ("train_fit", "train_fit_device_tables", "train_step"):
        sps = {str(k): v.get(key) for k, v in sorted(by_count.items())}
        one = by_count.get(1, {}).get(key)
        out[f"{key}_samples_per_s"] = sps
        out[f"{key}_scaling_efficiency"] = {
            str(k): (round(v[key] / (k * one), 4) if one and v.get(key) else None)
            for k, v in sorted(by_count.items())}
    return out


# ---- FuxiCTR DIN ---------------------------------------------------------------------------
class DinRunner:
    """FuxiCTR's DIN (model_zoo/LongCTR/DIN) at sizes matched to the ranker."""

    def __init__(self, data: Data) -> None:
        from collections import OrderedDict

        import torch

        self.torch = torch
        with common.stub_missing_modules(FUXICTR_IMPORT_ONLY_MODULES) as stubbed:
            from fuxictr.features import FeatureMap

            din_cls = _import_din()
        self.stubbed = stubbed
        d, r = data.sizes.embedding_dim, data.cfg.ranker
        feature_map = FeatureMap("saviorrec_bench", data_dir="/nonexistent")
        feature_map.labels = ["label"]
        feature_map.default_emb_dim = d
        # Item side: id embedding + the same frozen multimodal embedding the ranker gets
        # (a FuxiCTR "embedding" feature, projected by a linear layer) -> item_info_dim = 2d.
        feature_map.features = OrderedDict([
            ("user_id", {"type": "categorical", "source": "user",
                         "vocab_size": data.sizes.num_users}),
            ("item_id", {"type": "categorical", "source": "item",
                         "vocab_size": data.sizes.num_items, "padding_idx": 0}),
            ("item_mm", {"type": "embedding", "source": "item", "pretrain_dim": d,
                         "embedding_dim": d}),
        ])
        feature_map.num_fields = feature_map.get_num_fields()
        feature_map.set_column_index()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.config = {"embedding_dim": d, "item_features": ["item_id", "item_mm"],
                       "dnn_hidden_units": list(r.dnn_units), "dnn_activations": "ReLU",
                       "attention_hidden_units": [64], "attention_hidden_activations": "Dice",
                       "optimizer": "Adagrad", "learning_rate": r.lr, "max_gradient_norm": 10.0,
                       "execution": "eager (as FuxiCTR runs it)"}
        self.model = din_cls(
            feature_map, gpu=0 if self.device.type == "cuda" else -1, embedding_dim=d,
            dnn_hidden_units=list(r.dnn_units), dnn_activations="ReLU",
            attention_hidden_units=[64], attention_hidden_activations="Dice",
            learning_rate=r.lr, optimizer="Adagrad", loss="binary_crossentropy",
            verbose=0, model_root="/tmp/fuxictr_bench", metrics=["logloss"],
        )
        self.model.to(self.device)
        # torch's Adagrad makes its state sums when constructed (in FuxiCTR's compile, while the
        # parameters were still on the CPU): move them next to the parameters.
        for state in self.model.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.to(self.device)
        self.model._batch_index = 0  # set by BaseModel.fit, read by train_step
        self.model._max_gradient_norm = 10.0  # BaseModel.fit's default
        self.samples, self.items = data.samples, data.items

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def host_batch(self, order: np.ndarray, batch_size: int, index: int) -> tuple:
        """FuxiCTR LongCTR's collator output (batch_dict, item_dict, mask), from numpy: the same
        shuffled rows and item-table gather as the ranker's pipeline."""
        n_batches = len(order) // batch_size
        rows = order[(index % n_batches) * batch_size:(index % n_batches + 1) * batch_size]
        samples, torch = self.samples, self.torch
        seq = samples.seq_item_ids[rows]
        items = np.concatenate([seq, samples.item_id[rows, None]], axis=1).reshape(-1)
        batch_dict = {"user_id": torch.from_numpy(samples.user_id[rows]),
                      "label": torch.from_numpy(samples.label[rows].astype("float32"))}
        item_dict = {"item_id": torch.from_numpy(items),
                     "item_mm": torch.from_numpy(self.items.embedding[items])}
        return batch_dict, item_dict, torch.from_numpy(seq > 0).float()

    def to_device(self, batch: tuple) -> tuple:
        batch_dict, item_dict, mask = batch
        dev = self.device
        return ({k: v.to(dev, non_blocking=True) for k, v in batch_dict.items()},
                {k: v.to(dev, non_blocking=True) for k, v in item_dict.items()},
                mask.to(dev, non_blocking=True))

    def sync(self, out: Any) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train(self, batch: tuple) -> Any:
        self.model.train()
        # train_step mutates item_dict in place (moves to device): give it a shallow copy.
        return self.model.train_step((batch[0], dict(batch[1]), batch[2]))

    def predict(self, batch: tuple) -> Any:
        self.model.eval()
        with self.torch.no_grad():
            return self.model.forward((batch[0], dict(batch[1]), batch[2]))["y_pred"]


def _import_din() -> Any:
    """Load model_zoo/LongCTR/DIN/DIN.py alone: the wheel installs ``model_zoo`` next to
    ``fuxictr``, and importing the package ``model_zoo.LongCTR`` would import all ten models."""
    import importlib.util

    import fuxictr

    path = Path(fuxictr.__file__).resolve().parent.parent / "model_zoo/LongCTR/DIN/DIN.py"
    spec = importlib.util.spec_from_file_location("fuxictr_model_zoo_din", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"FuxiCTR DIN not found at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DIN


def run_din_suite(rec: Recorder, args: argparse.Namespace, din: DinRunner,
                  batch_size: int) -> dict[str, dict[str, Any]]:
    base = {"model": "FuxiCTR-DIN", "variant": "din", "backend": "torch-eager",
            "precision": "float32", "batch_size": batch_size, "jit_compile": False,
            "params": din.params()}
    kw = {"batch_size": batch_size, "steps": args.steps, "warmup": args.warmup}
    order = np.random.default_rng(0).permutation(len(din.samples))
    out: dict[str, dict[str, Any]] = {}
    out["pipeline"] = measure(rec, {**base, "model": "host_pipeline_din"}, "pipeline",
                              lambda: common.time_loop(lambda i: din.host_batch(
                                  order, batch_size, i), sync=lambda _: None, **kw))
    # Combined loop: host batch -> device -> step, as FuxiCTR's fit loop does (no prefetch).
    out["train_fit"] = measure(rec, base, "train_fit", lambda: common.time_loop(
        lambda i: din.train(din.to_device(din.host_batch(order, batch_size, i))),
        sync=din.sync, **kw))
    dev = [din.to_device(din.host_batch(order, batch_size, i))
           for i in range(args.device_batches)]
    out["train_step"] = measure(rec, base, "train_step", lambda: common.time_loop(
        lambda i: din.train(dev[i % len(dev)]), sync=din.sync, **kw))
    out["predict_step"] = measure(rec, base, "predict_step", lambda: common.time_loop(
        lambda i: din.predict(dev[i % len(dev)]), sync=din.sync, **kw))
    return out


# ---- summary -------------------------------------------------------------------------------
def _sps(record: dict[str, Any] | None) -> float | None:
    if record is None or "error" in record:
        return None
    return float(record["samples_per_s"])


def summarize(batch_size: int, ranker: dict[str, dict[str, Any]],
              din: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    s: dict[str, Any] = {"batch_size": batch_size}
    for key in ("pipeline", "train_fit", "train_fit_device_tables", "train_step", "predict_step"):
        s[f"ranker_{key}_samples_per_s"] = _sps(ranker.get(key))
        if din is not None:
            s[f"din_{key}_samples_per_s"] = _sps(din.get(key))
    fit, step, pipe = (ranker.get(k) for k in ("train_fit", "train_step", "pipeline"))
    if fit and step and _sps(fit) and _sps(step):
        s["ranker_data_wait_ms_per_batch"] = round(fit["ms_per_batch"] - step["ms_per_batch"], 4)
        s["ranker_data_wait_fraction"] = round(1 - step["ms_per_batch"] / fit["ms_per_batch"], 3)
        if pipe and _sps(pipe):
            s["bottleneck"] = _bottleneck(fit["ms_per_batch"], step["ms_per_batch"],
                                          pipe["ms_per_batch"])
    if fit and "compile_s_est" in fit:
        s["ranker_compile_s_est"] = fit["compile_s_est"]
    for key in ("train_fit", "train_fit_device_tables", "train_step"):
        ours = _sps(ranker.get(key))
        if ours is None:
            continue
        s[f"target_{TARGET_TRAIN_SAMPLES_PER_S}_{key}_met"] = ours >= TARGET_TRAIN_SAMPLES_PER_S
        theirs = _sps(din.get(key)) if din else None
        if theirs:
            s[f"ratio_vs_din_{key}"] = round(ours / theirs, 3)
            s[f"target_{TARGET_RATIO_VS_DIN}x_din_{key}_met"] = ours / theirs >= TARGET_RATIO_VS_DIN
    return s


def _bottleneck(fit_ms: float, step_ms: float, pipeline_ms: float) -> str:
    """Name the slowest stage. Dispatch is asynchronous, so the host builds batch i+1 while the
    device runs step i: fit's ms/batch ~ max(pipeline, step) + loop overhead + copy."""
    if fit_ms <= 1.15 * step_ms:
        return "device compute: the fit loop runs at the speed of the train step"
    if pipeline_ms >= step_ms:
        return (f"host input pipeline: building a batch (shuffled rows + item-table gather) takes "
                f"{pipeline_ms:.2f} ms vs {step_ms:.2f} ms of device step (fit: {fit_ms:.2f} ms)")
    return (f"loop overhead or host-to-device copy: fit {fit_ms:.2f} ms/batch vs step "
            f"{step_ms:.2f} and pipeline {pipeline_ms:.2f}; compare the prebuilt_host_batches and "
            "steps_per_execution rows of --profile")


TABLE_COLUMNS = ("model", "variant", "backend", "precision", "tag", "batch_size", "measure",
                 "samples_per_s", "ms_per_batch", "compile_s_est", "error")


# ---- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("jax", "torch"), default="jax")
    p.add_argument("--batch-sizes", default=None,
                   help="comma separated (default 1024,8192; --tiny: 32,64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 100; tiny 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5; tiny 2)")
    p.add_argument("--device-batches", type=int, default=4,
                   help="distinct device-resident batches cycled by the step-only loops")
    p.add_argument("--variant", default="full", help="ranker variant (tf_ranker.variants)")
    p.add_argument("--jit-compile", choices=("on", "off", "both"), default="on",
                   help="jax: XLA; torch: torch.compile. 'both' measures off, then on")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--skip-din", action="store_true", help="do not run FuxiCTR's DIN")
    p.add_argument("--profile", action="store_true",
                   help="also time variants at the first batch size to find the bottleneck")
    p.add_argument("--spe", type=int, default=8, help="steps_per_execution of --profile (jax)")
    p.add_argument("--workers", type=int, default=4,
                   help="threads building batches for the device-item-table fit and --profile")
    p.add_argument("--fit-spe", type=int, default=None,
                   help="steps_per_execution of the device-item-table fit (default: as trained)")
    p.add_argument("--diagnose-fit", action="store_true",
                   help="also time the device-item-table fit over prebuilt host batches and over "
                        "batches already on the device (what the host input costs)")
    p.add_argument("--tiny", action="store_true", help="small sizes for a CPU smoke test")
    p.add_argument("--num-items", type=int, default=None, help="item table rows")
    p.add_argument("--data-parallel", action="store_true",
                   help="jax: training samples/s per device count (--devices) with a global batch "
                        "of k x the per-device --batch-sizes; skips the other measurements")
    p.add_argument("--skip-host-gather", action="store_true",
                   help="--data-parallel: skip the fit whose host gathers the item features "
                        "(ranker.item_tables: host; slow, and not the training default)")
    p.add_argument("--devices", default=None,
                   help="--data-parallel: comma separated device counts (default 1,N: all visible)")
    args = p.parse_args(argv)
    if args.data_parallel and args.backend != "jax":
        p.error("--data-parallel needs --backend jax (keras.distribution)")
    if (args.devices or args.skip_host_gather) and not args.data_parallel:
        p.error("--devices and --skip-host-gather need --data-parallel")
    if args.data_parallel:
        args.skip_din = True
        default_batches = "16" if args.tiny else "1024"  # per device
    else:
        default_batches = "32,64" if args.tiny else "1024,8192"
    args.batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    args.steps = args.steps or (5 if args.tiny else 100)
    args.warmup = args.warmup or (2 if args.tiny else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    # JAX would otherwise take 75% of GPU memory at start-up, starving DIN (torch) in the same
    # process; XLA then allocates as it needs.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    common.ensure_repo_on_path()
    import keras  # after KERAS_BACKEND

    with common.stub_missing_modules(CONTRACT_IMPORT_ONLY_MODULES) as stubbed:
        # Imported under the stubs; used later through local imports.
        import tf_ranker.batches
        import tf_ranker.train  # noqa: F401

    if args.backend == "torch" or not args.skip_din:
        import torch

        # TF32 matmuls for torch (XLA uses them by default for float32 on the GPU): the same
        # arithmetic for the ranker under torch and for DIN.
        torch.set_float32_matmul_precision("high")

    sizes = tiny_sizes() if args.tiny else paper_sizes()
    if args.num_items:
        sizes = replace(sizes, num_items=args.num_items)
    device_counts: list[int] = []
    global_batches = list(args.batch_sizes)
    if args.data_parallel:
        visible = len(keras.distribution.list_devices())
        device_counts = sorted({int(k) for k in args.devices.split(",")} if args.devices
                               else {1, visible})
        if device_counts[0] < 1 or device_counts[-1] > visible:
            raise SystemExit(f"--devices {device_counts}: {visible} devices are visible")
        global_batches = [b * k for b in args.batch_sizes for k in device_counts]
    # The pool is a multiple of every batch size (no partial batch) and holds >= 4 batches.
    lcm = int(np.lcm.reduce(global_batches))
    want = max(sizes.pool_samples, 4 * max(global_batches))
    sizes = replace(sizes, pool_samples=-(-want // lcm) * lcm)
    cfg = sizes.config()
    payload: dict[str, Any] = {
        "benchmark": "ranker_throughput",
        **common.run_header(sys.argv),
        "backend": args.backend,
        "keras_backend": keras.backend.backend(),
        "versions": common.library_versions(),
        "sizes": asdict(sizes),
        "ranker_config": cfg.ranker.model_dump(mode="json"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {"train_samples_per_s_at_1024": TARGET_TRAIN_SAMPLES_PER_S,
                    "ratio_vs_din": TARGET_RATIO_VS_DIN},
        "stubbed_modules": stubbed,
    }
    start = time.perf_counter()
    samples, items = make_data(sizes, len(cfg.stats.pv_buckets))
    data = Data(cfg, sizes, samples, items)
    payload["data_build_s"] = round(time.perf_counter() - start, 3)
    payload["device"] = common.device_info()
    rec = Recorder(args.out, payload)
    rec.flush()

    if args.data_parallel:
        section = run_data_parallel(rec, args, data, device_counts)
        payload["device"] = common.device_info()
        finish(rec, args.out, start, "data_parallel", section["results"])
        return 0

    jit_modes = {"on": [True], "off": [False], "both": [False, True]}[args.jit_compile]
    jit_best = jit_modes[-1]
    main_measures = ("pipeline", "train_fit", "fit_device_tables", "train_step", "predict_step")
    ranker_main: dict[tuple[int, bool], dict[str, Any]] = {}
    din_main: dict[int, dict[str, Any]] = {}

    def update_summary() -> None:
        """Per batch size, the compiled figures where measured, else the uncompiled ones."""
        payload["summary"] = []
        for b in args.batch_sizes:
            ranker = ranker_main.get((b, jit_best)) or ranker_main.get((b, jit_modes[0]))
            if ranker is not None:
                payload["summary"].append(summarize(b, ranker, din_main.get(b)))
        rec.flush()

    for pass_index, jit in enumerate(jit_modes):
        for i, b in enumerate(args.batch_sizes):
            extra = ("fit_workers", "fit_prebuilt", "parts") \
                if args.profile and i == 0 and jit == jit_best else ()
            ranker_main[(b, jit)] = run_ranker_suite(
                rec, args, data, variant=args.variant, precision="float32", batch_size=b,
                jit_compile=jit, measures=main_measures + extra)
            update_summary()
        payload["device"] = common.device_info()  # now that the frameworks have started
        # DIN after the first pass: a slow torch.compile pass must not starve it of time.
        if pass_index == 0 and not args.skip_din:
            try:
                din = DinRunner(data)
                stubbed += din.stubbed
                payload["din_config"] = din.config
                for b in args.batch_sizes:
                    din_main[b] = run_din_suite(rec, args, din, b)
                del din
            except Exception as e:  # noqa: BLE001 - report DIN's failure, keep the ranker's
                traceback.print_exc()
                payload["din_error"] = f"{type(e).__name__}: {e}"[:2000]
            update_summary()

    if args.profile:
        b = args.batch_sizes[0]
        runs: list[tuple[str, dict[str, Any]]] = [
            ("no_mba", {"variant": "no_mba", "measures": ("train_fit", "train_step")}),
            ("base", {"variant": "base", "measures": ("train_fit", "train_step")}),
            ("no_auc_metric", {"auc_metric": False, "measures": ("train_fit", "train_step")}),
            ("bf16", {"precision": "bf16",
                      "measures": ("train_fit", "train_step", "predict_step")}),
        ]
        if args.backend == "jax":  # the torch backend requires steps_per_execution == 1
            runs.append((f"spe{args.spe}", {"steps_per_execution": args.spe,
                                            "measures": ("train_fit",)}))
        for tag, options in runs:
            kwargs: dict[str, Any] = {"variant": args.variant, "precision": "float32",
                                      "batch_size": b, "jit_compile": jit_best, **options}
            try:
                run_ranker_suite(rec, args, data, tag=tag, **kwargs)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rec.add({"model": "SaviorRanker", "tag": tag, "measure": "profile",
                         "error": f"{type(e).__name__}: {e}"[:2000]})

    finish(rec, args.out, start, "summary",
           [{k: v for k, v in s.items() if v is not None} for s in payload["summary"]])
    return 0


def finish(rec: Recorder, out: Path, start: float, label: str, rows: list[Any]) -> None:
    """Total time into the JSON, then the results table and one line per summary row."""
    rec.payload["total_s"] = round(time.perf_counter() - start, 2)
    rec.flush()
    print()
    print(common.format_table(rec.payload["results"], TABLE_COLUMNS))
    print()
    for row in rows:
        print(f"{label}:", row)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
