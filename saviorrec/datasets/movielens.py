"""Read a folder in the MovieLens ml-latest-small layout into the EVENTS and ITEMS tables.

Required: ratings.csv (userId, movieId, rating, timestamp in unix seconds) and movies.csv
(movieId, title, genres). Optional: tags.csv (movieId, tag), overviews.csv (movieId, overview),
posters/<movieId>.jpg and links.csv (not used by any table; only reported). Every check of a
row goes through :class:`BadRows`: bad rows raise :class:`BadInputError` or are dropped and
counted, by file and reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from saviorrec.config import DataConfig
from saviorrec.datasets.badrows import BadInputError, BadRows, is_id, read_csv
from saviorrec.datasets.subsample import keep_users
from saviorrec.schema import EVENTS, ITEMS

REQUIRED_FILES = ("ratings.csv", "movies.csv")
OPTIONAL_FILES = ("tags.csv", "overviews.csv", "links.csv", "posters")
NO_GENRES = "(no genres listed)"  # MovieLens' marker for an empty genre list: stored as null
MAX_UNIX_SECONDS = 10**11  # year ~5138; keeps seconds * 1e6 inside int64


@dataclass(frozen=True)
class MovieLens:
    events: pa.Table  # schema.EVENTS, sorted by user, time, item
    items: pa.Table  # schema.ITEMS, sorted by item
    skipped: dict[str, dict[str, int]]  # file -> reason -> rows dropped (bad_rows: skip)
    absent: list[str]  # optional files or folders that were not there
    ratings_sha256: str
    posters_unmatched: int  # posters/<id>.jpg whose id is not in movies.csv (not used)
    users_before_subsample: int


def load_movielens(source_dir: Path, data: DataConfig) -> MovieLens:
    source_dir = Path(source_dir).resolve()
    if not source_dir.is_dir():
        raise BadInputError(f"{source_dir}: MovieLens folder does not exist (set data.source_dir "
                            "or SAVIORREC_DATA)")
    for name in REQUIRED_FILES:
        if not (source_dir / name).is_file():
            raise BadInputError(f"{source_dir / name}: required file is missing")
    absent = [name for name in OPTIONAL_FILES if not (source_dir / name).exists()]
    bad = BadRows(data.bad_rows)

    movies = _movies(source_dir / "movies.csv", bad)
    known = pd.Index(movies["item_id"])
    ratings = _ratings(source_dir / "ratings.csv", known, data, bad)
    tags = _tags(source_dir / "tags.csv", known, bad) if "tags.csv" not in absent else None
    overviews = (
        _overviews(source_dir / "overviews.csv", known, bad)
        if "overviews.csv" not in absent else None
    )
    posters, unmatched = _posters(source_dir / "posters", known)

    users_before = int(ratings["user_id"].nunique())
    ratings = ratings[keep_users(ratings["user_id"].to_numpy(), data.user_fraction)]
    return MovieLens(
        events=_events_table(ratings),
        items=_items_table(movies, tags, overviews, posters),
        skipped=bad.summary(),
        absent=absent,
        ratings_sha256=hashlib.sha256((source_dir / "ratings.csv").read_bytes()).hexdigest(),
        posters_unmatched=unmatched,
        users_before_subsample=users_before,
    )


# --- one function per file ----------------------------------------------------------------------
def _movies(path: Path, bad: BadRows) -> pd.DataFrame:
    frame = read_csv(path, ("movieId", "title", "genres"))
    frame = bad.reject(frame, ~is_id(frame["movieId"], positive=True), path=path,
                       column="movieId", reason="bad_id", problem="is not an integer id >= 1")
    frame = frame.assign(item_id=frame["movieId"].astype(np.int64))
    frame = bad.reject(frame, frame["item_id"].duplicated(), path=path, column="movieId",
                       reason="duplicate", problem="appears twice")
    frame = bad.reject(frame, frame["title"].str.strip() == "", path=path, column="title",
                       reason="empty_title", problem="is empty")
    genres = frame["genres"].str.strip()
    return pd.DataFrame({
        "item_id": frame["item_id"],
        "title": frame["title"].str.strip(),
        "genres": genres.where((genres != "") & (genres != NO_GENRES), None),
    })


def _ratings(path: Path, known: pd.Index, data: DataConfig, bad: BadRows) -> pd.DataFrame:
    frame = read_csv(path, ("userId", "movieId", "rating", "timestamp"))
    for column, positive in (("userId", False), ("movieId", True)):
        frame = bad.reject(frame, ~is_id(frame[column], positive=positive), path=path,
                           column=column, reason="bad_id", problem="is not an integer id")
    rating = pd.to_numeric(frame["rating"].str.strip(), errors="coerce")
    frame = bad.reject(frame, rating.isna(), path=path, column="rating", reason="bad_rating",
                       problem="is not a number")
    seconds = frame["timestamp"].str.strip()
    frame = bad.reject(
        frame, ~seconds.str.fullmatch(r"\d{1,12}") | (pd.to_numeric(seconds, errors="coerce")
                                                       >= MAX_UNIX_SECONDS),
        path=path, column="timestamp", reason="bad_timestamp",
        problem="is not a unix time in seconds",
    )
    frame = frame.assign(
        user_id=frame["userId"].astype(np.int64),
        item_id=frame["movieId"].astype(np.int64),
        rating_value=pd.to_numeric(frame["rating"].str.strip()).astype(np.float64),
        seconds=frame["timestamp"].astype(np.int64),
    )
    out_of_range = ~frame["rating_value"].between(data.rating_min, data.rating_max)
    frame = bad.reject(frame, out_of_range, path=path, column="rating",
                       reason="rating_out_of_range",
                       problem=f"is outside [{data.rating_min}, {data.rating_max}]")
    frame = bad.reject(frame, ~frame["item_id"].isin(known), path=path, column="movieId",
                       reason="unknown_item", problem="is not in movies.csv")
    frame = bad.reject(frame, frame.duplicated(["user_id", "item_id", "seconds"]), path=path,
                       column="timestamp", reason="duplicate",
                       problem="repeats an earlier (userId, movieId, timestamp)")
    return frame


def _tags(path: Path, known: pd.Index, bad: BadRows) -> pd.Series:
    """movieId -> its distinct tags, in order of first use, joined with ', '."""
    frame = read_csv(path, ("movieId", "tag"))
    frame = _known_items(frame, path, known, bad)
    frame = frame.assign(tag=frame["tag"].str.strip())
    frame = bad.reject(frame, frame["tag"] == "", path=path, column="tag",
                       reason="empty_value", problem="is empty")
    distinct = frame.drop_duplicates(["item_id", "tag"])
    return distinct.groupby("item_id", sort=True)["tag"].agg(", ".join)


def _overviews(path: Path, known: pd.Index, bad: BadRows) -> pd.Series:
    frame = read_csv(path, ("movieId", "overview"))
    frame = _known_items(frame, path, known, bad)
    frame = bad.reject(frame, frame["item_id"].duplicated(), path=path, column="movieId",
                       reason="duplicate", problem="appears twice")
    frame = frame.assign(overview=frame["overview"].str.strip())
    frame = bad.reject(frame, frame["overview"] == "", path=path, column="overview",
                       reason="empty_value", problem="is empty")
    return frame.set_index("item_id")["overview"]


def _known_items(frame: pd.DataFrame, path: Path, known: pd.Index, bad: BadRows) -> pd.DataFrame:
    frame = bad.reject(frame, ~is_id(frame["movieId"], positive=True), path=path,
                       column="movieId", reason="bad_id", problem="is not an integer id >= 1")
    frame = frame.assign(item_id=frame["movieId"].astype(np.int64))
    return bad.reject(frame, ~frame["item_id"].isin(known), path=path, column="movieId",
                      reason="unknown_item", problem="is not in movies.csv")


def _posters(folder: Path, known: pd.Index) -> tuple[pd.Series, int]:
    """movieId -> absolute poster path, and the number of posters of unknown movies."""
    if not folder.is_dir():
        return pd.Series(dtype=object), 0
    by_id = {int(p.stem): str(p.resolve()) for p in folder.glob("*.jpg") if p.stem.isdigit()}
    matched = pd.Series(by_id, dtype=object)
    in_known = matched.index.isin(known)
    return matched[in_known], int((~in_known).sum())


# --- arrow tables -------------------------------------------------------------------------------
def _events_table(ratings: pd.DataFrame) -> pa.Table:
    ratings = ratings.sort_values(["user_id", "seconds", "item_id"], kind="stable")
    return pa.table({
        "user_id": pa.array(ratings["user_id"].to_numpy(), pa.int64()),
        "item_id": pa.array(ratings["item_id"].to_numpy(), pa.int64()),
        "rating": pa.array(ratings["rating_value"].to_numpy(np.float32), pa.float32()),
        "event_timestamp": pa.array(ratings["seconds"].to_numpy() * 1_000_000,
                                    pa.timestamp("us", tz="UTC")),
    }, schema=EVENTS.arrow_schema())


def _items_table(
    movies: pd.DataFrame, tags: pd.Series | None, overviews: pd.Series | None, posters: pd.Series
) -> pa.Table:
    movies = movies.sort_values("item_id")
    ids = movies["item_id"]

    def lookup(values: pd.Series | None) -> list[str | None]:
        if values is None:
            return [None] * len(ids)
        found = values.reindex(ids.to_numpy())
        return [v if isinstance(v, str) else None for v in found]

    return pa.table({
        "item_id": pa.array(ids.to_numpy(), pa.int64()),
        "title": pa.array(movies["title"].tolist(), pa.string()),
        "genres": pa.array(movies["genres"].tolist(), pa.string()),
        "tags": pa.array(lookup(tags), pa.string()),
        "overview": pa.array(lookup(overviews), pa.string()),
        "image_path": pa.array(lookup(posters), pa.string()),
        "topic": pa.nulls(len(ids), pa.int64()),
    }, schema=ITEMS.arrow_schema())
