"""A deterministic subset of users (``data.user_fraction``), the same on every run and machine.

A user is kept when the SplitMix64 hash of its id, read as a number in [0, 1), is below the
fraction: no random state, no Python ``hash`` (salted per process), and vectorised so it runs on
streamed chunks of synthetic events as well as on MovieLens.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser of each int64 value, as uint64."""
    z = values.astype(np.int64).view(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def keep_users(user_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask: True for the users in the deterministic ``fraction`` subset."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"user fraction {fraction} must be in (0, 1]")
    if fraction == 1.0:
        return np.ones(len(user_ids), dtype=bool)
    unit = (splitmix64(np.asarray(user_ids)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return unit < fraction
