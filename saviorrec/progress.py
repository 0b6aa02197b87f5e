"""Progress bars for long loops: live on a terminal, one line every 30 s in a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, redrawn at most every 30 s when stderr is not a terminal."""
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, **kwargs)
