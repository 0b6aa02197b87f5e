"""LogCountTransform: log1p on count columns only, then the optional standardisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tf_ranker.layers import LogCountTransform
from tf_ranker.layers.stat_transform import DEFAULT_COUNT_COLUMNS, fit_standardization


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


def test_standardisation_by_hand() -> None:
    stats = np.array([[0.0, 0.2], [math.e - 1, 0.4], [math.e ** 2 - 1, 0.6]], "float32")
    mean, std = fit_standardization(stats, (True, False))
    # log1p'd count column: 0, 1, 2 -> mean 1, population std sqrt(2/3); rates 0.2/0.4/0.6
    np.testing.assert_allclose(mean, [1.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(std, [math.sqrt(2 / 3), math.sqrt(0.08 / 3)], atol=1e-6)
    layer = LogCountTransform((True, False), mean, std)
    out = np.asarray(layer(stats[None]))[0]
    np.testing.assert_allclose(out[:, 0], [-1.2247449, 0.0, 1.2247449], atol=1e-5)
    np.testing.assert_allclose(out[:, 1], [-1.2247449, 0.0, 1.2247449], atol=1e-5)
    again = LogCountTransform.from_config(layer.get_config())
    np.testing.assert_allclose(np.asarray(again(stats)), out, atol=1e-6)


def test_constant_column_is_centred_not_scaled() -> None:
    mean, std = fit_standardization(np.array([[3.0, 0.5], [3.0, 0.7]]), (False, False))
    assert mean == pytest.approx([3.0, 0.6]) and std == pytest.approx([1.0, 0.1])


def test_standardisation_validation() -> None:
    with pytest.raises(ValueError, match="both mean and std"):
        LogCountTransform((True,), mean=[0.0])
    with pytest.raises(ValueError, match="std has 1 values for 2 columns"):
        LogCountTransform((True, False), mean=[0.0, 0.0], std=[1.0])
    with pytest.raises(ValueError, match="std > 0"):
        LogCountTransform((True,), mean=[0.0], std=[0.0])
    with pytest.raises(ValueError, match="zero rows"):
        fit_standardization(np.zeros((0, 2)), (True, False))
    with pytest.raises(ValueError, match="NaN"):
        fit_standardization(np.array([[1.0, np.nan]]), (True, False))
    with pytest.raises(ValueError, match="NaN"):  # in a count column too
        fit_standardization(np.array([[np.nan, 0.5]]), (True, False))
