"""The exported ranker: a TF SavedModel loaded once with ``tf.saved_model.load``.

The ``serving_default`` signature (tf_ranker/export.py) takes ONE user's sequence (``user_id``
[1], ``seq_*`` [1, S, ...]) and N candidates (``item_*`` [N, ...]) and returns ``score`` [N].
Its concrete function is called directly with tensors of the dtypes it declares; ``meta.json``
beside it gives the model version, variant and the RQ-VAE version of its semantic ids.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


class ModelError(RuntimeError):
    """The SavedModel cannot be served (missing, unreadable, or inputs the service cannot feed)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


class Ranker:
    """``Ranker(export_dir).predict(inputs) -> float32 [N]``; thread-safe, no retracing."""

    def __init__(self, export_dir: Path) -> None:
        import tensorflow as tf

        self.export_dir = Path(export_dir)
        meta_path = self.export_dir / "meta.json"
        if not (self.export_dir / "saved_model.pb").is_file() or not meta_path.is_file():
            raise ModelError(f"no SavedModel with meta.json in {self.export_dir}: "
                             "run `saviorrec export` first")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
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
        self.output = "score" if "score" in outputs else outputs[0]

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
        skip = 2 if name.startswith("seq_") else 1
        if any(d is None for d in shape[skip:]):
            raise ModelError(f"input {name!r} has an unknown trailing dimension: {shape}")
        return tuple(int(d) for d in shape[skip:])  # type: ignore[arg-type]

    def sequence_length(self) -> int | None:
        """S when the signature fixes it, else None (any length)."""
        return self.inputs["seq_item_ids"].shape[1]

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tf = self._tf
        feed = {name: tf.convert_to_tensor(inputs[name], spec.dtype)
                for name, spec in self.inputs.items()}
        return self._fn(**feed)[self.output].numpy().reshape(-1)

    def warm_up(self, inputs: dict[str, np.ndarray], repeats: int = 3) -> float:
        """Run the signature a few times (first-call costs off the request path); seconds."""
        start = time.perf_counter()
        for _ in range(repeats):
            self.predict(inputs)
        return time.perf_counter() - start
