"""What the service page shows of an item besides its score: title, genres and poster.

The run's catalogue (``Lake.items``, schema.ITEMS) and the items onboarded since
(``Lake.onboarded_items``, written by ``saviorrec items add`` and ``POST /items``) are read once
and again whenever either file changes (size or mtime), so an item onboarded by another process
shows its title on the next request. Only ``item_id``, ``title``, ``genres`` and ``image_path``
are kept (about 100 bytes an item). Measured on the quick MovieLens run's 5,266 items: 20-30 ms
a (re)load on the loaded 2-core machine; the first read in a process also pays pyarrow's
start-up (~0.8 s), so the service reads the catalogue once when it starts.

A poster is served only from the ``image_path`` the catalogue records for that item id, never
from a path the request names, and only an image file (by suffix), so ``GET /ui/poster/{id}``
cannot read any other file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from saviorrec.lake import Lake

COLUMNS = ("item_id", "title", "genres", "image_path")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")  # what a poster file may be


@dataclass(frozen=True)
class Entry:
    title: str | None
    genres: str | None
    image_path: str | None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _read(path: Path) -> dict[int, Entry]:
    if not path.exists():
        return {}
    columns = pq.read_table(path, columns=list(COLUMNS)).to_pydict()
    return {int(i): Entry(columns["title"][k], columns["genres"][k], columns["image_path"][k])
            for k, i in enumerate(columns["item_id"])}


class Catalog:
    """item_id -> Entry over the catalogue and the onboarded items (onboarded ones win)."""

    def __init__(self, lake: Lake) -> None:
        self.files = (lake.items, lake.onboarded_items)
        self._lock = threading.Lock()
        self._seen: tuple[tuple[int, int] | None, ...] | None = None
        self._entries: dict[int, Entry] = {}
        self._onboarded: list[int] = []

    def _fresh(self) -> dict[int, Entry]:
        seen = tuple(_identity(f) for f in self.files)
        with self._lock:
            if seen != self._seen:
                catalogue, onboarded = (_read(f) for f in self.files)
                self._entries = {**catalogue, **onboarded}
                self._onboarded = list(onboarded)
                self._seen = seen
            return self._entries

    def entries(self, item_ids: list[int]) -> dict[int, Entry]:
        """The entries of those ids the catalogue knows."""
        entries = self._fresh()
        return {i: entries[i] for i in item_ids if i in entries}

    def poster(self, item_id: int) -> Path | None:
        """The item's poster file when the catalogue names one that exists."""
        entry = self._fresh().get(item_id)
        if entry is None or not entry.image_path:
            return None
        path = Path(entry.image_path)
        return path if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() else None

    def onboarded(self, n: int) -> list[int]:
        """The ``n`` items onboarded last, newest first."""
        self._fresh()
        return self._onboarded[::-1][:n]

    def first(self, n: int) -> list[int]:
        """``n`` catalogue ids spread evenly over the id order (a default candidate set)."""
        ids = sorted(self._fresh())
        step = max(1, len(ids) // n) if n else 1
        return ids[::step][:n]
