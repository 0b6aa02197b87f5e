"""The exported ranker: a TF SavedModel loaded once with ``tf.saved_model.load``.

The ``serving_default`` signature (saviorrec.ranker_inputs) takes ONE user and sequence (the
user side [1, ...], the sequence side [1, S, ...]) and N candidates ([N, ...]) and returns
``score`` [N]. Its concrete function is called directly with tensors of the dtypes it declares;
the export's meta (saviorrec.lake.ExportFiles) gives the model version, variant and the RQ-VAE
version of its semantic ids.

With ``xla=True`` the signature is wrapped in a ``tf.function(jit_compile=True)`` at load time:
the export stays a plain graph (TF-Serving runs it without XLA flags) and this service gets the
fused kernels (measured on 2 CPU cores, 200 candidates: 9.5 -> 3.2 ms). XLA compiles one
executable per input shape (~0.8 s each), so the candidate inputs are padded to the next
bucket (powers of two from 8) with copies of the last candidate, whose scores are dropped;
:meth:`Ranker.warm_up` compiles every bucket before the service takes requests. Candidates
are scored independently, so padding does not change the real candidates' scores.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saviorrec.lake import ExportFiles
from saviorrec.ranker_inputs import (
    BY_NAME,
    CANDIDATE,
    ITEM_ID,
    OUTPUT,
    SEQ_ITEM_IDS,
    SEQUENCE,
    SIGNATURE,
)

log = logging.getLogger(__name__)

SMALLEST_BUCKET = 8


def candidate_buckets(max_candidates: int) -> list[int]:
    """Powers of two from SMALLEST_BUCKET up to the first that holds ``max_candidates``."""
    buckets = [SMALLEST_BUCKET]
    while buckets[-1] < max_candidates:
        buckets.append(buckets[-1] * 2)
    return buckets


def set_tf_threads(tf: Any, threads: int) -> None:
    """Threads of each TensorFlow op (intra-op) and of ops run side by side (inter-op).

    Settable only before TensorFlow's runtime starts: later, a warning says the setting was
    ignored (e.g. a process that ran TensorFlow before loading the model)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as e:
        log.warning("serving.tf_threads=%d ignored: TensorFlow is already running (%s)",
                    threads, e)


class ModelError(RuntimeError):
    """The SavedModel cannot be served (missing, unreadable, or inputs the service cannot feed)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


class Ranker:
    """``Ranker(export_dir).predict(inputs) -> float32 [N]``; thread-safe, no retracing."""

    def __init__(self, export_dir: Path, *, xla: bool = False, max_candidates: int = 1000,
                 threads: int = 0) -> None:
        import tensorflow as tf

        if threads:
            set_tf_threads(tf, threads)
        self.export_dir = Path(export_dir)
        files = ExportFiles(self.export_dir)
        if not files.saved_model.is_file() or not files.meta.is_file():
            raise ModelError(f"no SavedModel with {files.meta.name} in {self.export_dir}: "
                             "run `saviorrec export` first")
        self.meta: dict[str, Any] = json.loads(files.meta.read_text())
        self._tf = tf
        self._loaded = tf.saved_model.load(str(self.export_dir))  # keeps the variables alive
        signatures = self._loaded.signatures
        if SIGNATURE not in signatures:
            raise ModelError(f"{self.export_dir}: no {SIGNATURE!r} signature "
                             f"(found {sorted(signatures)})")
        self._fn = signatures[SIGNATURE]
        self.inputs = {
            name: InputSpec(name, np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape.as_list()))
            for name, spec in self._fn.structured_input_signature[1].items()
        }
        outputs = list(self._fn.structured_outputs)
        self.output = OUTPUT if OUTPUT in outputs else outputs[0]
        self.xla = xla
        self.buckets = candidate_buckets(max_candidates) if xla else []
        self._call = self._fn
        if xla:
            specs = self._fn.structured_input_signature[1]
            signature = self._fn
            jitted = tf.function(lambda feed: signature(**feed), input_signature=[specs],
                                 jit_compile=True, autograph=False).get_concrete_function()
            self._call = lambda **feed: jitted(feed)

    @property
    def model_version(self) -> str:
        return str(self.meta.get("model_version", self.export_dir.name))

    @property
    def variant(self) -> str:
        return str(self.meta.get("variant", "unknown"))

    @property
    def rqvae_version(self) -> str | None:
        version = self.meta.get("rqvae_version")
        return str(version) if version else None

    def trailing(self, name: str) -> tuple[int, ...]:
        """Fixed trailing shape of an input after its batch (and sequence) axes."""
        shape = self.inputs[name].shape
        skip = 2 if BY_NAME[name].side == SEQUENCE else 1
        if any(d is None for d in shape[skip:]):
            raise ModelError(f"input {name!r} has an unknown trailing dimension: {shape}")
        return tuple(int(d) for d in shape[skip:])  # type: ignore[arg-type]

    def sequence_length(self) -> int | None:
        """S when the signature fixes it, else None (any length)."""
        return self.inputs[SEQ_ITEM_IDS].shape[1]

    def bucket(self, n: int) -> int:
        """Rows the model is called with for ``n`` candidates (n itself without XLA)."""
        return next((b for b in self.buckets if b >= n), n)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tf = self._tf
        n = len(inputs[ITEM_ID])
        pad = self.bucket(n) - n
        feed = {}
        for name, spec in self.inputs.items():
            value = inputs[name]
            if pad and BY_NAME[name].side == CANDIDATE:
                value = np.concatenate([value, np.repeat(value[-1:], pad, axis=0)])
            feed[name] = tf.convert_to_tensor(value, spec.dtype)
        return self._call(**feed)[self.output].numpy().reshape(-1)[:n]

    def warm_up(self, make_inputs: Callable[[int], dict[str, np.ndarray]],
                repeats: int = 3) -> float:
        """Run the signature for every bucket (XLA compiles each; without XLA, for 8
        candidates) a few times, so first-call costs stay off the request path; seconds."""
        start = time.perf_counter()
        for n in self.buckets or [SMALLEST_BUCKET]:
            inputs = make_inputs(n)
            for _ in range(repeats):
                self.predict(inputs)
        return time.perf_counter() - start
