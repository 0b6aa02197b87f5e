"""Item statistics as ranker features: log1p of the count columns, other columns unchanged.

Counts (pv, clicks, ...) span orders of magnitude; log1p brings them to the scale of the click
rates. Negative counts cannot occur and are clipped at 0 (log1p(-1) would be -inf).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from saviorrec.schema import ITEM_STAT_NUMERIC

# True where the column of ITEM_STAT_NUMERIC is a count: pv, clicks, pv_recent, clicks_recent.
DEFAULT_COUNT_COLUMNS: tuple[bool, ...] = tuple(not n.startswith("ctr") for n in ITEM_STAT_NUMERIC)


@keras.saving.register_keras_serializable(package="saviorrec")
class LogCountTransform(keras.layers.Layer):
    """``call(stats [..., C]) -> [..., C]`` with log1p applied where ``count_columns`` is True."""

    def __init__(self, count_columns: tuple[bool, ...] | list[bool] = DEFAULT_COUNT_COLUMNS,
                 **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not count_columns:
            raise ValueError("count_columns must name at least one column")
        self.count_columns = tuple(bool(c) for c in count_columns)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "count_columns": list(self.count_columns)}

    def build(self, stats_shape: tuple[int | None, ...]) -> None:
        if stats_shape[-1] is not None and stats_shape[-1] != len(self.count_columns):
            raise ValueError(f"stats have {stats_shape[-1]} columns, count_columns names "
                             f"{len(self.count_columns)}")

    def call(self, stats: Any) -> Any:
        stats = ops.cast(stats, "float32")
        is_count = ops.convert_to_tensor(self.count_columns, dtype="bool")
        return ops.where(is_count, ops.log1p(ops.maximum(stats, 0.0)), stats)
