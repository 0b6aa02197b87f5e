"""LogCountTransform: log1p on count columns only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tf_ranker.layers import LogCountTransform
from tf_ranker.layers.stat_transform import DEFAULT_COUNT_COLUMNS


def test_log1p_on_counts_by_hand() -> None:
    assert DEFAULT_COUNT_COLUMNS == (True, True, False, True, True, False)
    stats = np.array([[[math.e - 1, 0, 0.25, 3, -2, 0.5]]], "float32")  # [1, 1, 6]
    out = np.asarray(LogCountTransform()(stats))
    np.testing.assert_allclose(out, [[[1.0, 0.0, 0.25, math.log(4), 0.0, 0.5]]], atol=1e-6)


def test_validation() -> None:
    with pytest.raises(ValueError, match="count_columns"):
        LogCountTransform(count_columns=())
    with pytest.raises(ValueError, match="6 columns"):
        LogCountTransform((True,) * 5).build((None, 6))
