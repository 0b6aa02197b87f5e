"""Item and user statistics as ranker features: log1p of the count columns, optionally
standardised.

Counts (pv, clicks, ...) span orders of magnitude; log1p brings them to the scale of the click
rates. Negative counts cannot occur and are clipped at 0 (log1p(-1) would be -inf).

With ``mean`` and ``std`` (one per column, measured on the training split after log1p by
:func:`fit_standardization`; ``ranker.standardize_stats``), each column is then
``(x - mean) / std``. They are part of the layer's config, so a saved or exported model applies
the training split's moments to whatever it is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from saviorrec.schema import ITEM_STAT_NUMERIC

# True where the column of ITEM_STAT_NUMERIC is a count: pv, clicks, pv_recent, clicks_recent.
DEFAULT_COUNT_COLUMNS: tuple[bool, ...] = tuple(not n.startswith("ctr") for n in ITEM_STAT_NUMERIC)
# A column whose std is below this (e.g. constant in training) is centred but not scaled.
MIN_STD = 1e-6


def fit_standardization(stats: np.ndarray,
                        count_columns: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(mean, std) per column of what ``LogCountTransform(count_columns)`` (no standardisation)
    makes of every row of ``stats`` [..., C]; a std below MIN_STD becomes 1."""
    stats = np.asarray(stats, dtype="float32")
    if stats.size == 0:
        raise ValueError("cannot fit the statistics' standardisation on zero rows")
    if not np.isfinite(stats).all():  # checked before log1p(max(x, 0)), which may hide a NaN
        raise ValueError("statistics hold NaN or infinite values; cannot standardise them")
    x = keras.ops.convert_to_numpy(LogCountTransform(count_columns)(stats))
    x = x.astype("float64").reshape(-1, len(count_columns))
    std = x.std(axis=0)
    return ([float(m) for m in x.mean(axis=0)],
            [float(s) if s >= MIN_STD else 1.0 for s in std])


@keras.saving.register_keras_serializable(package="saviorrec")
class LogCountTransform(keras.layers.Layer):
    """``call(stats [..., C]) -> [..., C]``: log1p where ``count_columns`` is True, then
    ``(x - mean) / std`` when both are given."""

    def __init__(self, count_columns: tuple[bool, ...] | list[bool] = DEFAULT_COUNT_COLUMNS,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not count_columns:
            raise ValueError("count_columns must name at least one column")
        self.count_columns = tuple(bool(c) for c in count_columns)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and std is not None:
            for name, values in (("mean", mean), ("std", std)):
                if len(values) != len(self.count_columns):
                    raise ValueError(f"{name} has {len(values)} values for "
                                     f"{len(self.count_columns)} columns")
            if not all(np.isfinite(m) for m in mean) or not all(s > 0 for s in std):
                raise ValueError(f"mean must be finite and std > 0, got mean={list(mean)} "
                                 f"std={list(std)}")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "count_columns": list(self.count_columns),
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    def build(self, stats_shape: tuple[int | None, ...]) -> None:
        if stats_shape[-1] is not None and stats_shape[-1] != len(self.count_columns):
            raise ValueError(f"stats have {stats_shape[-1]} columns, count_columns names "
                             f"{len(self.count_columns)}")

    def call(self, stats: Any) -> Any:
        stats = ops.cast(stats, "float32")
        is_count = ops.convert_to_tensor(self.count_columns, dtype="bool")
        x = ops.where(is_count, ops.log1p(ops.maximum(stats, 0.0)), stats)
        if self.mean is None or self.std is None:
            return x
        mean = ops.convert_to_tensor(self.mean, dtype="float32")
        return (x - mean) / ops.convert_to_tensor(self.std, dtype="float32")
