"""Per-sample inputs packed into two matrices: the host gathers 2 arrays per batch, not 8.

A training batch of the ids-only path (item tables on the device, tf_ranker.item_tables) holds
eight arrays per sample row: user id and statistics, candidate id, statistics and PV bucket,
and the sequence's ids, statistics and PV buckets. Gathered one by one they cost the training
thread 0.67 ms per batch of 1024 on the CPU (benchmarks/results/ranker_fit_input_jax.json:
with batches prebuilt, fit ran 1.42 ms per batch against 1.88 ms); packed once per split into
one float32 and one int32 matrix, a batch is two row gathers (0.27 ms on the same CPU), and
the device unpacks them with slices inside the compiled step.

Layout, per sample row:
- floats: user_stats [U] | item_stats [C] | seq_stats [S * C] | base_score [1] (optional);
- ints (int32): user_id | item_id | item_pv_bucket | seq_item_ids [S] | seq_pv_bucket [S].
Ids must fit int32 (checked); the model maps every id to int32 anyway (models._in_vocab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tf_ranker.data import Samples
from tf_ranker.features import BASE_SCORE, NUM_STATS, NUM_USER_STATS

if TYPE_CHECKING:
    from saviorrec.config import RankerConfig

FLOATS, INTS = "packed_floats", "packed_ints"
_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class PackLayout:
    seq_len: int
    base_score: bool = False

    @property
    def widths(self) -> tuple[int, int]:
        """(float columns, int columns) of one packed row."""
        s = self.seq_len
        return NUM_USER_STATS + NUM_STATS + s * NUM_STATS + int(self.base_score), 3 + 2 * s

    def pack(self, samples: Samples) -> tuple[np.ndarray, np.ndarray]:
        """(floats [n, F] float32, ints [n, I] int32) of every sample row, in that row order."""
        n, s = len(samples), self.seq_len
        if samples.seq_item_ids.shape[1] != s:
            raise ValueError(f"samples have sequences of {samples.seq_item_ids.shape[1]}, "
                             f"the layout {s}")
        floats = [samples.user_stats, samples.stats, samples.seq_stats.reshape(n, s * NUM_STATS)]
        if self.base_score:
            if samples.base_score is None:
                raise ValueError(f"the layout packs {BASE_SCORE!r} but the samples have none")
            floats.append(samples.base_score.reshape(n, 1))
        ints = np.concatenate([samples.user_id[:, None], samples.item_id[:, None],
                               samples.pv_bucket[:, None], samples.seq_item_ids,
                               samples.seq_pv_bucket], axis=1)
        if ints.size and (ints.max() > _INT32_MAX or ints.min() < 0):
            raise ValueError(f"ids or buckets outside 0..{_INT32_MAX} cannot be packed as int32 "
                             "(set ranker.packed_inputs: false)")
        return (np.concatenate(floats, axis=1).astype(np.float32, copy=False),
                ints.astype(np.int32))

    def unpack(self, floats: Any, ints: Any) -> dict[str, Any]:
        """The model's named inputs from a packed batch (keras.ops: runs on the device)."""
        from keras import ops

        s, c, u = self.seq_len, NUM_STATS, NUM_USER_STATS
        out = {
            "user_stats": floats[:, :u],
            "item_stats": floats[:, u:u + c],
            "seq_stats": ops.reshape(floats[:, u + c:u + c + s * c], (-1, s, c)),
            "user_id": ints[:, 0],
            "item_id": ints[:, 1],
            "item_pv_bucket": ints[:, 2],
            "seq_item_ids": ints[:, 3:3 + s],
            "seq_pv_bucket": ints[:, 3 + s:3 + 2 * s],
        }
        if self.base_score:
            out[BASE_SCORE] = floats[:, u + c + s * c]
        return out


def training_layout(ranker: RankerConfig, samples: Samples,
                    base_score: bool = False) -> PackLayout | None:
    """The layout training packs its batches with: with item tables on the device and
    ``ranker.packed_inputs`` (the defaults), else None (unpacked batches)."""
    if ranker.item_tables != "device" or not ranker.packed_inputs:
        return None
    return PackLayout(seq_len=int(samples.seq_item_ids.shape[1]), base_score=base_score)
