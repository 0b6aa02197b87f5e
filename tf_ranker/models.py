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
from tf_ranker.model_config import CONFIG_VERSION, RankerModelConfig
from tf_ranker.variants import get_variant


def _in_vocab(ids: Any, size: int) -> Any:
    ids = ops.cast(ids, "int32")
    return ops.where(ops.logical_or(ids < 0, ids >= size), 0, ids)


@keras.saving.register_keras_serializable(package="saviorrec")
class SaviorRanker(keras.Model):
    """``call(inputs: dict) -> pCTR [B, 1]`` (float32); inputs as in :mod:`saviorrec.ranker_inputs`.

    Built from one :class:`~tf_ranker.model_config.RankerModelConfig`: ``SaviorRanker(config)``,
    or ``SaviorRanker(**fields)`` for the same fields (the rest take their defaults).
    """

    def __init__(self, config: RankerModelConfig | None = None, *, name: str | None = None,
                 **fields: Any) -> None:
        super().__init__(name=name)
        if config is None:
            config = RankerModelConfig.from_dict({"config_version": CONFIG_VERSION, **fields})
        elif fields:
            raise ValueError(f"SaviorRanker takes a config or its fields, not both: {sorted(fields)}")
        self.model_config = config
        self.spec = get_variant(config.variant)
        self.build()

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "config_version": CONFIG_VERSION,
                **self.model_config.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SaviorRanker:
        """A saved config of any readable version (tf_ranker.model_config)."""
        fields = dict(config)
        name = fields.pop("name", None)
        return cls(RankerModelConfig.from_dict(fields), name=name)

    # what export and serving read of the config
    @property
    def variant(self) -> str:
        return self.model_config.variant

    @property
    def embedding_dim(self) -> int:
        return self.model_config.embedding_dim

    @property
    def semantic_id_width(self) -> int:
        return self.model_config.semantic_id_width

    @property
    def use_base_score(self) -> bool:
        return self.model_config.use_base_score

    @property
    def rqvae_version(self) -> str | None:
        return self.model_config.rqvae_version

    # ---- weights -------------------------------------------------------------------------
    def build(self, input_shape: Any = None) -> None:
        """Create every weight from the config alone (input shapes are implied by it)."""
        if self.built:
            return
        spec, c, d = self.spec, self.model_config, self.embedding_dim
        h_dim = self.behaviour_dim

        def embedding(size: int, width: int, name: str) -> keras.layers.Embedding:
            layer = keras.layers.Embedding(size, width, name=name)
            layer.build((None,))
            return layer

        self.user_embedding = embedding(c.num_users, c.id_dim, "user_embedding")
        # P_u of eq. 1: the user's point-in-time counts (log1p) and click rate, in every variant.
        moments = {k: list(v) for k, v in (c.stat_moments or {}).items()}
        self.user_stat_transform = LogCountTransform(
            USER_STAT_COUNTS, moments.get("user_mean"), moments.get("user_std"),
            name="user_stat_transform")
        self.user_stat_transform.build((None, NUM_USER_STATS))
        if spec.use_id:
            self.item_embedding = embedding(c.num_items, c.id_dim, "item_embedding")
            self.item_id_mask = ItemIdMask(c.num_items, c.id_dropout, name="item_id_mask")
            self.item_id_mask.build((None,))
        if spec.use_stats:
            self.pv_bucket_embedding = embedding(c.num_pv_buckets, c.stat_dim,
                                                 "pv_bucket_embedding")
            self.stat_transform = LogCountTransform(
                mean=moments.get("item_mean"), std=moments.get("item_std"), name="stat_transform")
            self.stat_transform.build((None, NUM_STATS))
        if spec.mba is not None:
            self.mba = ModalBehaviorAlignment(c.levels, c.codebook_size, c.mba_dim,
                                              skip=spec.skip,
                                              norm_epsilon=c.mba_norm_epsilon, name="mba")
            self.mba.build((None, d), (None, self.semantic_id_width))
        if spec.multimodal:
            self.attention = BidirectionalTargetAttention(
                c.heads, c.attention_dim, blocks=spec.blocks,
                normalization=c.attention_normalization, name="attention")
            self.attention.build((None, h_dim), (None, None, h_dim), (None, d), (None, None, d))
        else:
            self.attention = TargetAttention(c.heads, c.attention_dim,
                                             normalization=c.attention_normalization,
                                             name="attention")
            self.attention.build((None, h_dim), (None, None, h_dim), (None, None, h_dim))
        width = self.user_dim + h_dim + len(spec.blocks) * c.attention_dim
        width += (d if spec.multimodal else 0) + int(self.use_base_score)
        if spec.simtier:
            self.simtier = SimTier(c.simtier_bins, name="simtier")
            width += c.simtier_bins
        if c.feature_cross:
            import keras_rs  # optional DCN-v2 cross layer over the DNN inputs

            self.cross = keras_rs.layers.FeatureCross(name="feature_cross")
            self.cross.build((None, width))
            # keras-rs 0.4 creates the cross Dense in build() but builds it only on first call:
            # build it now, or load_model finds no weights to restore and keeps random ones.
            self.cross.dense.build((None, width))
        self.dnn = []
        for i, units in enumerate(c.dnn_units):
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
        return self.model_config.id_dim + NUM_USER_STATS

    @property
    def behaviour_dim(self) -> int:
        """Width of h: item id embedding and/or statistics + pv_bucket embedding."""
        return (self.model_config.id_dim if self.spec.use_id else 0) + \
            (NUM_STATS + self.model_config.stat_dim if self.spec.use_stats else 0)

    # ---- forward -------------------------------------------------------------------------
    def _behaviour(self, ids: Any, stats: Any, pv_bucket: Any, training: bool | None = None) -> Any:
        parts = []
        if self.spec.use_id:
            parts.append(self.item_embedding(self.item_id_mask(ids, training=training)))
        if self.spec.use_stats:
            parts += [ops.cast(self.stat_transform(stats), self.compute_dtype),
                      self.pv_bucket_embedding(_in_vocab(pv_bucket, self.model_config.num_pv_buckets))]
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
        user_ids = ops.reshape(_in_vocab(inputs[USER_ID], self.model_config.num_users), (-1,))
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
        if self.model_config.feature_cross:
            x = self.cross(x, x)
        for layer in self.dnn:
            x = layer(x)
        return self.out(x)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        return self.score(inputs, self.encode_sequence(inputs), training=training)
