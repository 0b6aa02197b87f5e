"""SaviorRanker: pCTR = DNN(user, candidate, attention over the behaviour sequence) (eq. 1, 16).

The user is [user id embedding, log1p counts + click rate of the user's earlier events] (P_u
of eq. 1). Every item (candidate or sequence position) has a behaviour vector
h = [id embedding, log1p counts + click rates, pv_bucket embedding] (variant no_id drops the
first part, no_stats the other two) and, in the multimodal variants, a multimodal vector z
(the frozen encoder embedding, aligned by MBA). The sequence side (h_seq, z_seq, the
attention keys and values) is computed by :meth:`encode_sequence` and the candidate side by
:meth:`score`. Their tensors broadcast: a batch of B samples (training) or one user's sequence
[1, S] against N candidates (serving) run through the same code.

Vocabulary sizes come from the data and live in the config, so ``from_config`` rebuilds the
model. Ids outside a vocabulary map to row 0 (item 0 is padding, user 0 unused): unseen ids at
serving time share one "unknown" embedding instead of failing. Item ids inside the vocabulary
that the training split never read (cold items) map to that row too, and ``id_dropout`` trains
it (tf_ranker.layers.ItemIdMask), so a cold item is scored by its statistics and content rather
than by an untrained id embedding.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from saviorrec.ranker_inputs import (
    BASE_SCORE,
    ITEM_EMBEDDING,
    ITEM_ID,
    ITEM_PV_BUCKET,
    ITEM_SEMANTIC_IDS,
    ITEM_STATS,
    NUM_STATS,
    NUM_USER_STATS,
    SEQ_EMBEDDING,
    SEQ_ITEM_IDS,
    SEQ_PV_BUCKET,
    SEQ_SEMANTIC_IDS,
    SEQ_STATS,
    USER_ID,
    USER_STAT_COUNTS,
    USER_STATS,
)
from tf_ranker.layers import (
    BidirectionalTargetAttention,
    ItemIdMask,
    LogCountTransform,
    ModalBehaviorAlignment,
    SimTier,
    TargetAttention,
)
from tf_ranker.variants import get_variant

# ranker.standardize_stats: per-column mean and std of the log1p'd item and user statistics
# (tf_ranker.train.stat_moments, measured on the training split).
STAT_MOMENT_KEYS = ("item_mean", "item_std", "user_mean", "user_std")


def _in_vocab(ids: Any, size: int) -> Any:
    ids = ops.cast(ids, "int32")
    return ops.where(ops.logical_or(ids < 0, ids >= size), 0, ids)


@keras.saving.register_keras_serializable(package="saviorrec")
class SaviorRanker(keras.Model):
    """``call(inputs: dict) -> pCTR [B, 1]`` (float32); inputs as in :mod:`saviorrec.ranker_inputs`."""

    def __init__(
        self,
        *,
        variant: str = "full",
        num_users: int,
        num_items: int,
        num_pv_buckets: int,
        embedding_dim: int,
        levels: int,
        codebook_size: int,
        semantic_id_width: int | None = None,
        id_dim: int = 16,
        stat_dim: int = 16,
        heads: int = 8,
        attention_dim: int = 64,
        mba_dim: int | None = None,
        mba_norm_epsilon: float = 1e-2,
        dnn_units: tuple[int, ...] | list[int] = (256, 128, 64),
        feature_cross: bool = False,
        simtier_bins: int = 10,
        use_base_score: bool = False,
        rqvae_version: str | None = None,
        stat_moments: dict[str, list[float]] | None = None,
        attention_normalization: str = "softmax",
        id_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = get_variant(variant)
        for name, value in (("num_users", num_users), ("num_items", num_items),
                            ("num_pv_buckets", num_pv_buckets), ("embedding_dim", embedding_dim),
                            ("levels", levels), ("codebook_size", codebook_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if mba_dim is not None and self.spec.mba_dim is not None and mba_dim != self.spec.mba_dim:
            raise ValueError(f"variant {variant!r} has mba_dim={self.spec.mba_dim}, got {mba_dim}")
        if len(dnn_units) < 1 or min(dnn_units) < 1:
            raise ValueError(f"dnn_units={list(dnn_units)} must be non-empty positive widths")
        self.variant = variant
        self.num_users, self.num_items, self.num_pv_buckets = num_users, num_items, num_pv_buckets
        self.embedding_dim, self.levels, self.codebook_size = embedding_dim, levels, codebook_size
        self.semantic_id_width = levels + 1 if semantic_id_width is None else semantic_id_width
        self.id_dim, self.stat_dim, self.heads = id_dim, stat_dim, heads
        # d_mba: the argument, else the variant's (Table 5), else the paper's 64.
        self.attention_dim = attention_dim
        self.mba_dim = mba_dim if mba_dim is not None else (self.spec.mba_dim or 64)
        self.mba_norm_epsilon = mba_norm_epsilon
        self.dnn_units = tuple(int(u) for u in dnn_units)
        self.feature_cross, self.simtier_bins = feature_cross, simtier_bins
        self.use_base_score, self.rqvae_version = use_base_score, rqvae_version
        self.attention_normalization = attention_normalization  # checked by TargetAttention
        self.id_dropout = id_dropout  # checked by ItemIdMask
        if stat_moments is not None and set(stat_moments) != set(STAT_MOMENT_KEYS):
            raise ValueError(f"stat_moments has keys {sorted(stat_moments)}, expected "
                             f"{list(STAT_MOMENT_KEYS)}")
        self.stat_moments = None if stat_moments is None else \
            {k: [float(x) for x in stat_moments[k]] for k in STAT_MOMENT_KEYS}
        self.build()

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "variant": self.variant,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_pv_buckets": self.num_pv_buckets,
            "embedding_dim": self.embedding_dim,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "semantic_id_width": self.semantic_id_width,
            "id_dim": self.id_dim,
            "stat_dim": self.stat_dim,
            "heads": self.heads,
            "attention_dim": self.attention_dim,
            "mba_dim": self.mba_dim,
            "mba_norm_epsilon": self.mba_norm_epsilon,
            "dnn_units": list(self.dnn_units),
            "feature_cross": self.feature_cross,
            "simtier_bins": self.simtier_bins,
            "use_base_score": self.use_base_score,
            "rqvae_version": self.rqvae_version,
            "stat_moments": self.stat_moments,
            "attention_normalization": self.attention_normalization,
            "id_dropout": self.id_dropout,
        }

    # ---- weights -------------------------------------------------------------------------
    def build(self, input_shape: Any = None) -> None:
        """Create every weight from the config alone (input shapes are implied by it)."""
        if self.built:
            return
        spec, d = self.spec, self.embedding_dim
        h_dim = self.behaviour_dim

        def embedding(size: int, width: int, name: str) -> keras.layers.Embedding:
            layer = keras.layers.Embedding(size, width, name=name)
            layer.build((None,))
            return layer

        self.user_embedding = embedding(self.num_users, self.id_dim, "user_embedding")
        # P_u of eq. 1: the user's point-in-time counts (log1p) and click rate, in every variant.
        moments = self.stat_moments or {}
        self.user_stat_transform = LogCountTransform(
            USER_STAT_COUNTS, moments.get("user_mean"), moments.get("user_std"),
            name="user_stat_transform")
        self.user_stat_transform.build((None, NUM_USER_STATS))
        if spec.use_id:
            self.item_embedding = embedding(self.num_items, self.id_dim, "item_embedding")
            self.item_id_mask = ItemIdMask(self.num_items, self.id_dropout, name="item_id_mask")
            self.item_id_mask.build((None,))
        if spec.use_stats:
            self.pv_bucket_embedding = embedding(self.num_pv_buckets, self.stat_dim,
                                                 "pv_bucket_embedding")
            self.stat_transform = LogCountTransform(
                mean=moments.get("item_mean"), std=moments.get("item_std"), name="stat_transform")
            self.stat_transform.build((None, NUM_STATS))
        if spec.mba is not None:
            self.mba = ModalBehaviorAlignment(self.levels, self.codebook_size, self.mba_dim,
                                              skip=spec.skip,
                                              norm_epsilon=self.mba_norm_epsilon, name="mba")
            self.mba.build((None, d), (None, self.semantic_id_width))
        if spec.multimodal:
            self.attention = BidirectionalTargetAttention(
                self.heads, self.attention_dim, blocks=spec.blocks,
                normalization=self.attention_normalization, name="attention")
            self.attention.build((None, h_dim), (None, None, h_dim), (None, d), (None, None, d))
        else:
            self.attention = TargetAttention(self.heads, self.attention_dim,
                                             normalization=self.attention_normalization,
                                             name="attention")
            self.attention.build((None, h_dim), (None, None, h_dim), (None, None, h_dim))
        width = self.user_dim + h_dim + len(spec.blocks) * self.attention_dim
        width += (d if spec.multimodal else 0) + int(self.use_base_score)
        if spec.simtier:
            self.simtier = SimTier(self.simtier_bins, name="simtier")
            width += self.simtier_bins
        if self.feature_cross:
            import keras_rs  # optional DCN-v2 cross layer over the DNN inputs

            self.cross = keras_rs.layers.FeatureCross(name="feature_cross")
            self.cross.build((None, width))
            # keras-rs 0.4 creates the cross Dense in build() but builds it only on first call:
            # build it now, or load_model finds no weights to restore and keeps random ones.
            self.cross.dense.build((None, width))
        self.dnn = []
        for i, units in enumerate(self.dnn_units):
            layer = keras.layers.Dense(units, activation="leaky_relu", name=f"dnn_{i}")
            layer.build((None, width))
            self.dnn.append(layer)
            width = units
        self.out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="pctr")
        self.out.build((None, width))
        self.built = True

    def set_known_items(self, item_ids: np.ndarray) -> None:
        """Only ``item_ids`` (those the training split reads) keep their own id embedding; every
        other item reads the shared "unknown" row (ItemIdMask). No-op without item ids."""
        if self.spec.use_id:
            self.item_id_mask.set_known(item_ids)

    def set_rq_codebook(self, codebook: np.ndarray) -> None:
        """Initialise the MBA codebook from the RQ codebook [L, K, latent] (no_raw_mm)."""
        if self.spec.mba != "rq":
            raise ValueError(f"variant {self.variant!r} keeps a zero-initialised MBA codebook")
        self.mba.set_codebook(codebook)

    @property
    def user_dim(self) -> int:
        """Width of the user part: id embedding and statistics."""
        return self.id_dim + NUM_USER_STATS

    @property
    def behaviour_dim(self) -> int:
        """Width of h: item id embedding and/or statistics + pv_bucket embedding."""
        return (self.id_dim if self.spec.use_id else 0) + \
            (NUM_STATS + self.stat_dim if self.spec.use_stats else 0)

    # ---- forward -------------------------------------------------------------------------
    def _behaviour(self, ids: Any, stats: Any, pv_bucket: Any, training: bool | None = None) -> Any:
        parts = []
        if self.spec.use_id:
            parts.append(self.item_embedding(self.item_id_mask(ids, training=training)))
        if self.spec.use_stats:
            parts += [ops.cast(self.stat_transform(stats), self.compute_dtype),
                      self.pv_bucket_embedding(_in_vocab(pv_bucket, self.num_pv_buckets))]
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def _modal(self, embedding: Any, semantic_ids: Any) -> Any:
        z = self.mba(embedding, semantic_ids) if self.spec.mba else embedding
        return ops.cast(z, self.compute_dtype)

    def encode_sequence(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The sequence side: mask, h_seq/z_seq projected to attention keys and values."""
        ids = inputs[SEQ_ITEM_IDS]
        state: dict[str, Any] = {"mask": ops.not_equal(ids, 0)}
        h_seq = self._behaviour(ids, inputs[SEQ_STATS], inputs[SEQ_PV_BUCKET])
        if self.spec.multimodal:
            z_seq = self._modal(inputs[SEQ_EMBEDDING], inputs[SEQ_SEMANTIC_IDS])
            state["projected"] = self.attention.project_sequence(h_seq, z_seq)
        else:
            state["projected"] = self.attention.project_sequence(h_seq, h_seq)
        if self.spec.simtier:
            state[SEQ_EMBEDDING] = inputs[SEQ_EMBEDDING]
        return state

    def score(self, inputs: dict[str, Any], state: dict[str, Any],
              training: bool | None = None) -> Any:
        """pCTR [N, 1] of N candidates against an encoded sequence of batch N or 1. In training,
        ``id_dropout`` of the candidates read the "unknown" id row (sequence items never do)."""
        h_cand = self._behaviour(inputs[ITEM_ID], inputs[ITEM_STATS], inputs[ITEM_PV_BUCKET],
                                 training=training)
        n = ops.shape(h_cand)[0]
        user_ids = ops.reshape(_in_vocab(inputs[USER_ID], self.num_users), (-1,))
        user_stats = ops.reshape(inputs[USER_STATS], (-1, NUM_USER_STATS))
        user = ops.concatenate([
            self.user_embedding(user_ids),
            ops.cast(self.user_stat_transform(user_stats), self.compute_dtype),
        ], axis=-1)
        user = ops.broadcast_to(user, (n, self.user_dim))
        parts = [user, h_cand]
        mask = state["mask"]
        if self.spec.multimodal:
            z_cand = self._modal(inputs[ITEM_EMBEDDING], inputs[ITEM_SEMANTIC_IDS])
            parts += [z_cand, self.attention.attend(h_cand, z_cand, state["projected"], mask)]
        else:
            parts.append(self.attention.attend(h_cand, *state["projected"], mask))
        if self.spec.simtier:
            hist = self.simtier(inputs[ITEM_EMBEDDING], state[SEQ_EMBEDDING], mask)
            parts.append(ops.cast(hist, self.compute_dtype))
        if self.use_base_score:
            parts.append(ops.cast(ops.reshape(inputs[BASE_SCORE], (-1, 1)), self.compute_dtype))
        x = ops.concatenate(parts, axis=-1)
        if self.feature_cross:
            x = self.cross(x, x)
        for layer in self.dnn:
            x = layer(x)
        return self.out(x)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        return self.score(inputs, self.encode_sequence(inputs), training=training)
