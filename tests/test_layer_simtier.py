"""SimTier: histogram of candidate-to-sequence cosine similarities, worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tf_ranker.layers import SimTier


def test_histogram_by_hand() -> None:
    # bins = 4 over [-1, 1]: [-1,-.5) [-.5,0) [0,.5) [.5,1]. Cosines with candidate [2, 0]:
    # [3, 0] -> 1 (last tier), [0, 1] -> 0 (tier 2), [-1, 0] -> -1 (tier 0), [1, -1] -> 0.7071
    # (tier 3) but masked. Fractions over the 3 valid items: [1/3, 0, 1/3, 1/3].
    cand = np.array([[2, 0], [1, 1]], "float32")
    seq = np.array([[[3, 0], [0, 1], [-1, 0], [1, -1]]] * 2, "float32")
    mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)
    out = np.asarray(SimTier(bins=4)(cand, seq, mask))
    np.testing.assert_allclose(out, [[1 / 3, 0, 1 / 3, 1 / 3], [0, 0, 0, 0]], atol=1e-6)


def test_one_sequence_broadcasts_over_candidates() -> None:
    # Candidate [1, 1] vs the same 3 valid items: cosines 0.7071, 0.7071, -0.7071 -> tiers 3,3,0.
    cand = np.array([[2, 0], [1, 1]], "float32")
    seq = np.array([[[3, 0], [0, 1], [-1, 0], [1, -1]]], "float32")
    out = np.asarray(SimTier(bins=4)(cand, seq, np.array([[1, 1, 1, 0]], bool)))
    np.testing.assert_allclose(out[1], [1 / 3, 0, 0, 2 / 3], atol=1e-6)


def test_validation_and_config() -> None:
    with pytest.raises(ValueError, match="bins"):
        SimTier(bins=1)
    assert SimTier.from_config(SimTier(bins=7).get_config()).bins == 7
