"""Progress for long loops: live on a terminal, at most one line per epoch or per 30 s in a log.

``progress`` wraps tqdm (writes to stderr): redrawn at most every 30 s when stderr is not a
terminal, and a bar of one epoch ends its line when the epoch ends. ``fit_verbose`` is Keras's
``fit(verbose=...)``: its live bar on a terminal, one line per epoch (2) in a log file, where
the live bar would print a new line every 0.05 s (Keras writes to stdout).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 30.0


def progress(iterable: Iterable[T], **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, redrawn at most every 30 s when stderr is not a terminal."""
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)


def fit_verbose() -> int:
    """Keras ``fit`` verbosity: 1 (live bar) on a terminal, 2 (one line per epoch) otherwise."""
    return 1 if sys.stdout.isatty() else 2
