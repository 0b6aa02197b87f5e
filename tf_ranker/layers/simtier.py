"""SimTier (Sheng et al., CIKM'24; baseline of the paper's Table 2): a histogram of the cosine
similarities between the candidate's embedding and each item of the behaviour sequence.

[-1, 1] is split into ``bins`` equal tiers; the output is the fraction of valid (unmasked)
sequence items in each tier, all zeros for an empty sequence. The histogram is piecewise
constant in its inputs (no gradient), which is fine: it reads frozen embeddings.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="saviorrec")
class SimTier(keras.layers.Layer):
    """``call(candidate [B, d], sequence [B|1, S, d], mask [B|1, S]) -> [B, bins]``."""

    def __init__(self, bins: int = 10, epsilon: float = 1e-12, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        self.epsilon = epsilon

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins, "epsilon": self.epsilon}

    def _unit(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        return x * ops.rsqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), self.epsilon))

    def call(self, candidate: Any, sequence: Any, mask: Any = None) -> Any:
        cosine = ops.sum(ops.expand_dims(self._unit(candidate), 1) * self._unit(sequence), -1)
        tier = ops.floor((cosine + 1.0) * (0.5 * self.bins))  # [-1, 1] -> 0..bins
        tier = ops.cast(ops.clip(tier, 0, self.bins - 1), "int32")  # cosine 1.0 -> last tier
        counts = ops.one_hot(tier, self.bins, dtype="float32")  # [B, S, bins]
        if mask is not None:
            counts = counts * ops.expand_dims(ops.cast(mask, "float32"), -1)
        counts = ops.sum(counts, axis=1)
        return counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1.0)

    def compute_output_shape(self, candidate_shape: tuple[int | None, ...],
                             *args: Any) -> tuple[int | None, ...]:
        return (candidate_shape[0], self.bins)
