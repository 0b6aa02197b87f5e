"""Bi-directional target attention (paper section 3.4, eq. 11-15).

Four target-attention blocks over the behaviour sequence h_seq (item id + statistics) and the
aligned multimodal sequence z_seq:

- behavior        h_b   = TA(h_cand, h_seq, h_seq)   (eq. 11)
- modal           h_m   = TA(z_cand, z_seq, z_seq)   (eq. 12)
- modal2behavior  h_m2b = TA(z_cand, z_seq, h_seq)   (eq. 13: similarity in semantic space,
                                                      aggregates behaviour embeddings)
- behavior2modal  h_b2m = TA(h_cand, h_seq, z_seq)   (eq. 14)

output = concat(h_b, h_m, h_b2m, h_m2b) (eq. 15). ``blocks`` keeps a subset in that order: the
no_bidir ablation uses ("behavior", "modal").
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tf_ranker.layers.target_attention import TargetAttention, check_heads, check_normalization

# name -> (query side, key side, value side); "h" = behaviour, "z" = modal. Eq. 15 order.
BLOCKS: dict[str, tuple[str, str, str]] = {
    "behavior": ("h", "h", "h"),
    "modal": ("z", "z", "z"),
    "behavior2modal": ("h", "h", "z"),
    "modal2behavior": ("z", "z", "h"),
}


@keras.saving.register_keras_serializable(package="saviorrec")
class BidirectionalTargetAttention(keras.layers.Layer):
    """``call(h_cand [B, Dh], h_seq [B, S, Dh], z_cand [B, Dz], z_seq [B, S, Dz], mask [B, S])
    -> [B, len(blocks) * value_dim]``."""

    def __init__(self, num_heads: int = 8, key_dim: int = 64, value_dim: int | None = None,
                 blocks: tuple[str, ...] | list[str] = tuple(BLOCKS),
                 normalization: str = "softmax", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        blocks = tuple(blocks)
        unknown = [b for b in blocks if b not in BLOCKS]
        if not blocks or unknown or len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks={list(blocks)}: need distinct names from {list(BLOCKS)}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = key_dim if value_dim is None else value_dim
        self.blocks = tuple(b for b in BLOCKS if b in blocks)  # canonical eq. 15 order
        check_heads(num_heads, key_dim, self.value_dim)
        check_normalization(normalization)
        self.normalization = normalization  # of every block (TargetAttention)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "blocks": list(self.blocks),
            "normalization": self.normalization,
        }

    def build(self, h_cand_shape: tuple[int | None, ...], h_seq_shape: tuple[int | None, ...],
              z_cand_shape: tuple[int | None, ...], z_seq_shape: tuple[int | None, ...],
              mask_shape: tuple[int | None, ...] | None = None) -> None:
        cand = {"h": h_cand_shape, "z": z_cand_shape}
        seq = {"h": h_seq_shape, "z": z_seq_shape}
        for name in self.blocks:
            q, k, v = BLOCKS[name]
            layer = TargetAttention(self.num_heads, self.key_dim, self.value_dim,
                                    self.normalization, name=name, dtype=self.dtype_policy)
            layer.build(cand[q], seq[k], seq[v])
            setattr(self, f"ta_{name}", layer)  # tracked attribute, stable weight paths

    @property
    def attention(self) -> dict[str, TargetAttention]:
        return {name: getattr(self, f"ta_{name}") for name in self.blocks}

    def project_sequence(self, h_seq: Any, z_seq: Any) -> dict[str, tuple[Any, Any]]:
        """Projected keys/values of every block, computed once per sequence."""
        seq = {"h": h_seq, "z": z_seq}
        return {
            name: layer.project_sequence(seq[BLOCKS[name][1]], seq[BLOCKS[name][2]])
            for name, layer in self.attention.items()
        }

    def attend(self, h_cand: Any, z_cand: Any, projected: dict[str, tuple[Any, Any]],
               mask: Any = None) -> Any:
        cand = {"h": h_cand, "z": z_cand}
        outs = [layer.attend(cand[BLOCKS[name][0]], *projected[name], mask)
                for name, layer in self.attention.items()]
        return ops.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]

    def call(self, h_cand: Any, h_seq: Any, z_cand: Any, z_seq: Any, mask: Any = None) -> Any:
        return self.attend(h_cand, z_cand, self.project_sequence(h_seq, z_seq), mask)

    def compute_output_shape(self, h_cand_shape: tuple[int | None, ...],
                             *args: Any, **kwargs: Any) -> tuple[int | None, ...]:
        return (h_cand_shape[0], len(self.blocks) * self.value_dim)
