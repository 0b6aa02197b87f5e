"""Items to onboard: a CSV or JSON Lines file, or JSON records (POST /items), as schema.ITEMS rows.

The layout is MovieLens' movies.csv and overviews.csv side by side: the id (``movieId`` or
``item_id``), ``title``, ``genres`` (pipe separated), ``overview`` and the poster
(``poster_path`` or ``image_path``; a relative path resolves against the file's folder), and
``tags`` (one string, e.g. "dark, twist ending": MovieLens' tags.csv joined per item, which the
batch encoder embeds with the title; an item onboarded without the tags its catalogue row has
gets another embedding). Only the id is required; text and image are each optional. Errors name the file (or "request"), the row
(CSV: its line, counting the header; JSONL: its line; records: the index), the column and the
value. Strings are stripped; empty ones and MovieLens' "(no genres listed)" are absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from saviorrec.datasets.badrows import BadInputError
from saviorrec.datasets.movielens import NO_GENRES
from saviorrec.schema import ITEMS

ID_COLUMNS = ("movieId", "item_id")
POSTER_COLUMNS = ("poster_path", "image_path")
TEXT_COLUMNS = ("title", "genres", "tags", "overview")
COLUMNS = (*ID_COLUMNS, *TEXT_COLUMNS, *POSTER_COLUMNS)
INT64_MAX = 2**63 - 1


class OnboardRefused(ValueError):
    """Items that cannot be onboarded as asked: an id that exists with other content, an item
    without text or image under onboard.no_content: refuse, or models of another version."""


def _text(value: Any, where: str, column: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInputError(f"{where}, column {column!r}: value {value!r} is not a string")
    value = value.strip()
    return value or None


def _item_id(value: Any, where: str, column: str) -> int:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int) or not 1 <= text <= INT64_MAX:
        raise BadInputError(f"{where}, column {column!r}: value {value!r} is not an integer "
                            "id >= 1")
    return text


def _one_of(record: dict[str, Any], names: tuple[str, ...], where: str) -> tuple[str, Any]:
    present = [n for n in names if record.get(n) not in (None, "")]
    if len(present) > 1:
        raise BadInputError(f"{where}: columns {present} name the same field: give one")
    return (present[0], record[present[0]]) if present else (names[0], None)


def item_rows(records: Iterable[tuple[str, dict[str, Any]]], *, base: Path | None) -> pa.Table:
    """(where, record) pairs -> ITEMS rows in input order; ``base`` resolves relative posters."""
    rows: list[dict[str, Any]] = []
    first_row: dict[int, str] = {}
    for where, record in records:
        if not isinstance(record, dict):
            raise BadInputError(f"{where}: {type(record).__name__} is not an object of "
                                f"columns {list(COLUMNS)}")
        unknown = sorted(set(record) - set(COLUMNS))
        if unknown:
            raise BadInputError(f"{where}: unknown column(s) {unknown}; the columns are "
                                f"{list(COLUMNS)}")
        id_column, raw_id = _one_of(record, ID_COLUMNS, where)
        if raw_id is None:
            raise BadInputError(f"{where}: no item id (column {ID_COLUMNS[0]!r} or "
                                f"{ID_COLUMNS[1]!r})")
        item_id = _item_id(raw_id, where, id_column)
        if item_id in first_row:
            raise BadInputError(f"{where}, column {id_column!r}: value {item_id} repeats "
                                f"{first_row[item_id]}")
        first_row[item_id] = where
        poster_column, raw_poster = _one_of(record, POSTER_COLUMNS, where)
        poster = _text(raw_poster, where, poster_column)
        if poster is not None:
            path = Path(poster).expanduser()
            path = path if path.is_absolute() or base is None else base / path
            if not path.is_file():
                raise BadInputError(f"{where}, column {poster_column!r}: value {poster!r}: no "
                                    f"such file ({path})")
            poster = str(path.resolve())
        genres = _text(record.get("genres"), where, "genres")
        rows.append({"item_id": item_id, "title": _text(record.get("title"), where, "title") or "",
                     "genres": None if genres == NO_GENRES else genres,
                     "tags": _text(record.get("tags"), where, "tags"),
                     "overview": _text(record.get("overview"), where, "overview"),
                     "image_path": poster, "topic": None})
    return pa.Table.from_pylist(rows, schema=ITEMS.arrow_schema())


def read_new_items(path: Path) -> pa.Table:
    """A .csv or .jsonl/.json file of items -> ITEMS rows (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise BadInputError(f"{path}: not a readable CSV: {e}") from e
        records = ((f"{path}: row {k + 2}", {c: v for c, v in rec.items() if v != ""})
                   for k, rec in enumerate(frame.to_dict("records")))
    elif suffix in (".jsonl", ".json", ".ndjson"):
        def parsed() -> Iterable[tuple[str, dict[str, Any]]]:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}: line {number}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadInputError(f"{path}: line {number}: not JSON ({e})") from None
        records = parsed()
    else:
        raise BadInputError(f"{path}: expected a .csv or .jsonl file, got {suffix or 'no suffix'!r}")
    table = item_rows(records, base=path.parent)
    if table.num_rows == 0:
        raise BadInputError(f"{path}: no items")
    return table


def request_items(records: list[Any]) -> pa.Table:
    """The ``items`` of a POST /items body -> ITEMS rows; posters must be absolute paths."""
    if not records:
        raise BadInputError("request: no items")
    return item_rows(((f"request: items[{k}]", r) for k, r in enumerate(records)), base=None)


def has_content(table: pa.Table) -> list[bool]:
    """Per row: some text (title, genres, tags, overview) or an image."""
    columns = [table.column(c).to_pylist() for c in (*TEXT_COLUMNS, "image_path")]
    return [any(bool(v) for v in values) for values in zip(*columns, strict=True)]
