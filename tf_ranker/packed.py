"""Per-sample inputs packed into two matrices: the host gathers 2 arrays per batch, not 8.

A training batch of the ids-only path (item tables on the device, tf_ranker.item_tables) holds
eight arrays per sample row: user id and statistics, candidate id, statistics and PV bucket,
and the sequence's ids, statistics and PV buckets. Gathered one by one they cost the training
thread 0.67 ms per batch of 1024 on the CPU (benchmarks/results/ranker_fit_input_jax.json:
with batches prebuilt, fit ran 1.42 ms per batch against 1.88 ms); packed once per split into
one float32 and one int32 matrix, a batch is two row gathers (0.27 ms on the same CPU), and
the device unpacks them with slices inside the compiled step.

Layout, per sample row: the inputs of source SAMPLE (saviorrec.ranker_inputs), in the
specification's order, each flattened, then the rows the device gathers the sequence statistics
by (source STATS_ROW); float32 inputs in one matrix, int64 ones in the other:
- floats: user_stats [U] | item_stats [C] | base_score [1] (optional);
- ints (int32): user_id | item_id | item_pv_bucket | seq_item_ids [S] | seq_stats_row [S].
The statistics of the positions themselves (7 numbers each) stay in the statistics table on the
device: a packed row is 9 floats and 3 + 2S ints, not 9 + 6S floats and 3 + 2S ints.
Ids must fit int32 (checked); the model maps every id to int32 anyway (models._in_vocab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from saviorrec.ranker_inputs import ITEM, SEQUENCE, STATS_ROW, RankerInput, inputs
from saviorrec.schema import SEQ_STATS_ROW
from tf_ranker.data import Samples

if TYPE_CHECKING:
    from saviorrec.config import RankerConfig

FLOATS, INTS = "packed_floats", "packed_ints"
_INT32_MAX = np.iinfo(np.int32).max
# What the device gathers the STATS_ROW inputs by: one int per sequence position.
_STATS_ROWS = RankerInput(SEQ_STATS_ROW, "int64", SEQUENCE, "stats_row")


@dataclass(frozen=True)
class PackLayout:
    seq_len: int
    base_score: bool = False

    def columns(self, dtype: str) -> list[tuple[RankerInput, int, int]]:
        """(input, first column, width) of each packed input of ``dtype`` (float32 | int64)."""
        out, start = [], 0
        specs = [i for i in inputs(self.base_score) if i.source not in (ITEM, STATS_ROW)]
        for spec in [*specs, _STATS_ROWS]:
            if spec.dtype != dtype:
                continue
            trailing = spec.trailing(0, 0)  # inputs of source SAMPLE have a fixed width
            width = int(np.prod(trailing, dtype=np.int64)) * \
                (self.seq_len if spec.side == SEQUENCE else 1)
            out.append((spec, start, width))
            start += width
        return out

    @property
    def widths(self) -> tuple[int, int]:
        """(float columns, int columns) of one packed row."""
        return tuple(sum(w for *_, w in self.columns(t)) for t in ("float32", "int64"))  # type: ignore[return-value]

    def pack(self, samples: Samples) -> tuple[np.ndarray, np.ndarray]:
        """(floats [n, F] float32, ints [n, I] int32) of every sample row, in that row order."""
        n, s = len(samples), self.seq_len
        if samples.seq_item_ids.shape[1] != s:
            raise ValueError(f"samples have sequences of {samples.seq_item_ids.shape[1]}, "
                             f"the layout {s}")

        def matrix(dtype: str) -> np.ndarray:
            parts = []
            for spec, _, width in self.columns(dtype):
                column = samples.input(spec.name)
                if column is None:
                    raise ValueError(f"the layout packs {spec.name!r} but the samples have none")
                parts.append(column.reshape(n, width))
            return np.concatenate(parts, axis=1)

        ints = matrix("int64")
        if ints.size and (ints.max() > _INT32_MAX or ints.min() < 0):
            raise ValueError(f"ids or buckets outside 0..{_INT32_MAX} cannot be packed as int32 "
                             "(set ranker.packed_inputs: false)")
        return matrix("float32").astype(np.float32, copy=False), ints.astype(np.int32)

    def unpack(self, floats: Any, ints: Any) -> dict[str, Any]:
        """The model's named inputs from a packed batch (keras.ops: runs on the device)."""
        from keras import ops

        out = {}
        for dtype, packed in (("float32", floats), ("int64", ints)):
            for spec, start, width in self.columns(dtype):
                trailing = spec.trailing(0, 0)
                if spec.side == SEQUENCE and trailing:
                    out[spec.name] = ops.reshape(packed[:, start:start + width],
                                                 (-1, self.seq_len, *trailing))
                elif spec.side != SEQUENCE and not trailing:
                    out[spec.name] = packed[:, start]
                else:
                    out[spec.name] = packed[:, start:start + width]
        return out


def training_layout(ranker: RankerConfig, samples: Samples,
                    base_score: bool = False) -> PackLayout | None:
    """The layout training packs its batches with: with item tables on the device and
    ``ranker.packed_inputs`` (the defaults), else None (unpacked batches)."""
    if ranker.item_tables != "device" or not ranker.packed_inputs:
        return None
    return PackLayout(seq_len=int(samples.seq_item_ids.shape[1]), base_score=base_score)
