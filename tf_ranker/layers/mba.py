"""Modal-Behaviour Alignment (paper section 3.3, eq. 6-9).

A trainable codebook C of the RQ codebook's shape [L, K] (width ``codebook_dim``, d_mba in
{64, 32, 16, 8} in Table 5) is indexed by the item's semantic ids: v_l = C_l[c_l] (eq. 6),
v = concat(v_1..v_L) (eq. 7), L2-normalised and mapped back to the embedding width d by a
linear fusion layer (eq. 8), and added to the frozen embedding: z_align = z + v_align (eq. 9).
The codebook starts at zero, so the layer starts as the identity on z.

L2 normalisation is ``x / sqrt(|x|^2 + norm_epsilon)``. The paper's zero initialisation puts x
exactly at 0, where tf.math.l2_normalize's 1e-12 floor multiplies gradients by 1e6: Adagrad's
accumulator is then saturated in the first step and the codebook barely moves afterwards. A
floor of 1e-2 keeps the gradient at zero bounded (x10) and normalises any vector of norm >> 0.1.

Lookups and the codebook are float32 even under mixed precision (ARCHITECTURE: accelerator
path). The no_raw_mm ablation initialises C from the RQ codebook (:meth:`set_codebook`) and
drops the skip connection (``skip=False``): z_align = v_align.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from saviorrec.config import RankerConfig

_RANKER = RankerConfig()  # the defaults: ranker.mba_dim (d_mba) and ranker.mba_norm_epsilon


@keras.saving.register_keras_serializable(package="saviorrec")
class ModalBehaviorAlignment(keras.layers.Layer):
    """``call(embedding [..., d] float, semantic_ids [..., >= L] int) -> [..., d]``.

    Ids beyond the first L columns (the disambiguation index) are ignored; codes outside
    [0, K) are clipped into range.
    """

    def __init__(
        self,
        levels: int,
        codebook_size: int,
        codebook_dim: int = _RANKER.mba_dim,
        skip: bool = True,
        norm_epsilon: float = _RANKER.mba_norm_epsilon,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        for name, value in (("levels", levels), ("codebook_size", codebook_size),
                            ("codebook_dim", codebook_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if norm_epsilon <= 0:
            raise ValueError(f"norm_epsilon must be > 0, got {norm_epsilon}")
        self.levels = levels
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.skip = skip
        self.norm_epsilon = norm_epsilon

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "skip": self.skip,
            "norm_epsilon": self.norm_epsilon,
        }

    def build(self, embedding_shape: tuple[int | None, ...],
              semantic_ids_shape: tuple[int | None, ...] | None = None) -> None:
        if semantic_ids_shape is not None and semantic_ids_shape[-1] is not None \
                and semantic_ids_shape[-1] < self.levels:
            raise ValueError(f"semantic ids have {semantic_ids_shape[-1]} columns, need >= "
                             f"levels={self.levels}")
        self.output_dim = int(embedding_shape[-1])
        self.codebook = self.add_weight(
            shape=(self.levels, self.codebook_size, self.codebook_dim),
            initializer="zeros", dtype="float32", name="codebook",
        )
        self.fusion = keras.layers.Dense(self.output_dim, name="fusion", dtype="float32")
        self.fusion.build((None, self.levels * self.codebook_dim))

    def set_codebook(self, codebook: np.ndarray) -> None:
        """Overwrite C with ``codebook`` [L, K, codebook_dim] (the RQ codebook for no_raw_mm)."""
        expected = (self.levels, self.codebook_size, self.codebook_dim)
        if tuple(codebook.shape) != expected:
            raise ValueError(f"codebook shape {tuple(codebook.shape)} != expected {expected}")
        self.codebook.assign(np.asarray(codebook, dtype="float32"))

    def level_importance(self, semantic_ids: np.ndarray) -> dict[str, list[float] | list[int]]:
        """Fig. 3: per level l, the mean L2 norm of the codebook rows C_l[c] that the items of
        ``semantic_ids`` [M, >= L] index (distinct codes, clipped as in :meth:`call`; the other
        rows never receive a gradient and stay at zero), and the mean L2 norm of the fusion
        kernel rows that read v_l (its L x codebook_dim input rows, split by level)."""
        levels, size, width = self.levels, self.codebook_size, self.codebook_dim
        codebook = keras.ops.convert_to_numpy(self.codebook).astype("float64")  # [L, K, width]
        kernel = keras.ops.convert_to_numpy(self.fusion.kernel).astype("float64")
        codes = np.clip(np.asarray(semantic_ids)[..., :levels].reshape(-1, levels), 0, size - 1)
        used = [np.unique(codes[:, level]) for level in range(levels)]
        rows = [np.linalg.norm(codebook[level, used[level]], axis=-1) for level in range(levels)]
        fusion = np.linalg.norm(kernel.reshape(levels, width, -1), axis=-1).mean(axis=1)
        return {
            "codebook": [float(r.mean()) if r.size else 0.0 for r in rows],
            "fusion": [float(x) for x in fusion],
            "codebook_rows_used": [int(u.size) for u in used],
        }

    def code_features(self, semantic_ids: Any) -> Any:
        """[M, L * codebook_dim]: the rows C_l[c_l] of the first L semantic ids, concatenated
        (eq. 6-7) and L2-normalised, the fusion layer's input (eq. 8); M = all leading axes."""
        levels, size, width = self.levels, self.codebook_size, self.codebook_dim
        codes = ops.cast(semantic_ids[..., :levels], "int32")
        codes = ops.reshape(ops.clip(codes, 0, size - 1), (-1, levels))  # [M, L]
        flat = codes + ops.arange(levels, dtype="int32") * size  # row of C_l[c_l] in [L*K]
        table = ops.reshape(ops.cast(self.codebook, "float32"), (levels * size, width))
        v = ops.reshape(ops.take(table, flat, axis=0), (-1, levels * width))  # eq. 6-7
        return v * ops.rsqrt(ops.sum(v * v, axis=-1, keepdims=True) + self.norm_epsilon)

    def call(self, embedding: Any, semantic_ids: Any) -> Any:
        v = self.code_features(semantic_ids)
        v_align = ops.reshape(self.fusion(v), ops.shape(embedding))  # eq. 8
        if not self.skip:
            return v_align
        return ops.cast(embedding, "float32") + v_align  # eq. 9

    def compute_output_shape(self, embedding_shape: tuple[int | None, ...],
                             *args: Any) -> tuple[int | None, ...]:
        return tuple(embedding_shape)
