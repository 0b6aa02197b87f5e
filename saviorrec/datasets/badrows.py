"""Bad input rows: stop with file, row, column and value, or drop them and count them.

Every loader check goes through :meth:`BadRows.reject`, so a row is never dropped without being
counted under its file and reason, and ``data.bad_rows: error`` names the first offending row.
Row numbers are 1-based lines of the CSV counting the header (the first data row is row 2).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

ROW = "_row"  # column holding each record's CSV line number

Policy = Literal["error", "skip"]


class BadInputError(ValueError):
    """Input that cannot be used; the message names the file, row, column and value."""


@dataclass
class BadRows:
    policy: Policy
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def reject(
        self,
        frame: pd.DataFrame,
        bad: pd.Series,
        *,
        path: Path,
        column: str,
        reason: str,
        problem: str,
    ) -> pd.DataFrame:
        """Rows of ``frame`` where ``bad`` is False; raise or count the others."""
        n_bad = int(bad.sum())
        if n_bad == 0:
            return frame
        if self.policy == "error":
            first = frame[bad].iloc[0]
            raise BadInputError(
                f"{path}: row {first[ROW]}, column {column!r}: value {first[column]!r} {problem} "
                f"[{reason}; {n_bad} such row(s); set data.bad_rows: skip to drop and count them]"
            )
        per_file = self.counts[path.name]
        per_file[reason] = per_file.get(reason, 0) + n_bad
        return frame[~bad]

    def summary(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(reasons.items())) for name, reasons in sorted(self.counts.items())}


def read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Every field as a string (nothing guessed), with the CSV line number in ``_row``."""
    if not path.is_file():
        raise BadInputError(f"{path}: required file is missing")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise BadInputError(f"{path}: not a readable CSV: {e}") from e
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadInputError(
            f"{path}: header {list(frame.columns)} lacks column(s) {missing}"
        )
    frame = frame[list(columns)].fillna("")
    frame[ROW] = frame.index + 2
    return frame.reset_index(drop=True)


def is_id(values: pd.Series, *, positive: bool) -> pd.Series:
    """Decimal integers that fit int64 (at most 18 digits); ``positive`` excludes 0."""
    pattern = r"[1-9]\d{0,17}" if positive else r"\d{1,18}"
    return values.str.strip().str.fullmatch(pattern)
