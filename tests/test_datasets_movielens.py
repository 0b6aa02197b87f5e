"""The MovieLens loader on the real ml-latest-small folder, checked against the CSVs read with
the csv module and against the counts in SOURCES.md."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from saviorrec.config import DataConfig
from saviorrec.datasets.movielens import MovieLens, load_movielens
from saviorrec.datasets.subsample import keep_users, splitmix64
from saviorrec.schema import EVENTS, ITEMS


@pytest.fixture(scope="module")
def movielens(movielens_dir: Path) -> MovieLens:
    return load_movielens(movielens_dir, DataConfig())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_counts_match_sources_md(movielens: MovieLens) -> None:
    EVENTS.validate_arrow(movielens.events)
    ITEMS.validate_arrow(movielens.items)
    items = movielens.items
    assert movielens.events.num_rows == 100_836
    assert items.num_rows == 9_742
    assert items.num_rows - items["image_path"].null_count == 9_520
    assert items.num_rows - items["overview"].null_count == 9_202
    assert len(set(movielens.events["user_id"].to_pylist())) == 610
    assert movielens.skipped == {}
    assert movielens.absent == []
    assert movielens.posters_unmatched == 0
    assert movielens.ratings_sha256 == (
        "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8")


def test_movie_1_and_user_1_spot_checks(movielens: MovieLens, movielens_dir: Path) -> None:
    movie = next(r for r in _rows(movielens_dir / "movies.csv") if r["movieId"] == "1")
    tags = [r["tag"] for r in _rows(movielens_dir / "tags.csv") if r["movieId"] == "1"]
    overview = next(r for r in _rows(movielens_dir / "overviews.csv") if r["movieId"] == "1")
    item = movielens.items.slice(0, 1).to_pylist()[0]
    assert item["item_id"] == 1
    assert item["title"] == movie["title"] == "Toy Story (1995)"
    assert item["genres"] == movie["genres"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert item["tags"] == ", ".join(dict.fromkeys(tags))
    assert item["overview"] == overview["overview"]
    assert item["image_path"] == str((movielens_dir / "posters" / "1.jpg").resolve())
    assert Path(item["image_path"]).is_file()
    assert item["topic"] is None

    user_1 = [r for r in _rows(movielens_dir / "ratings.csv") if r["userId"] == "1"]
    first = min(user_1, key=lambda r: (int(r["timestamp"]), int(r["movieId"])))
    row = movielens.events.slice(0, 1).to_pylist()[0]
    assert row["user_id"] == 1
    assert row["item_id"] == int(first["movieId"])
    assert row["rating"] == float(first["rating"])
    assert int(row["event_timestamp"].timestamp()) == int(first["timestamp"])
    assert str(row["event_timestamp"].tzinfo) == "UTC"
    n_user_1 = sum(1 for u in movielens.events["user_id"].to_pylist() if u == 1)
    assert n_user_1 == len(user_1)


def test_tags_are_distinct_per_movie_in_order_of_first_use(
    movielens: MovieLens, movielens_dir: Path
) -> None:
    expected: dict[int, dict[str, None]] = defaultdict(dict)
    for r in _rows(movielens_dir / "tags.csv"):
        expected[int(r["movieId"])][r["tag"].strip()] = None
    got = {i: t for i, t in zip(movielens.items["item_id"].to_pylist(),
                                movielens.items["tags"].to_pylist(), strict=True) if t is not None}
    assert got == {i: ", ".join(tags) for i, tags in expected.items()}


def test_no_genres_marker_is_null(movielens: MovieLens, movielens_dir: Path) -> None:
    marked = {int(r["movieId"]) for r in _rows(movielens_dir / "movies.csv")
              if r["genres"] == "(no genres listed)"}
    null = {i for i, g in zip(movielens.items["item_id"].to_pylist(),
                              movielens.items["genres"].to_pylist(), strict=True) if g is None}
    assert len(marked) == 34
    assert null == marked


def test_splitmix64_matches_the_published_test_vector() -> None:
    # Rosetta Code "Pseudo-random numbers/Splitmix64": seed 1234567 -> 6457827717110365317;
    # seed 0 -> 0xE220A8397B1DCDAF.
    out = splitmix64(np.array([1234567, 0], dtype=np.int64))
    assert out.tolist() == [6457827717110365317, 0xE220A8397B1DCDAF]


def test_user_fraction_keeps_whole_users_deterministically(movielens_dir: Path,
                                                           movielens: MovieLens) -> None:
    half = load_movielens(movielens_dir, DataConfig(user_fraction=0.5))
    third = load_movielens(movielens_dir, DataConfig(user_fraction=0.3))
    users_half = set(half.events["user_id"].to_pylist())
    users_third = set(third.events["user_id"].to_pylist())
    assert 0.4 * 610 < len(users_half) < 0.6 * 610
    assert 0.2 * 610 < len(users_third) < 0.4 * 610
    assert users_third < users_half  # nested: the hash threshold only moves
    per_user: dict[int, int] = defaultdict(int)
    for u in movielens.events["user_id"].to_pylist():
        per_user[u] += 1
    assert half.events.num_rows == sum(per_user[u] for u in users_half)
    assert half.items.num_rows == 9_742  # item side information is kept whole
    assert half.users_before_subsample == 610
    mask = keep_users(np.array(sorted(per_user)), 0.5)
    assert {u for u, k in zip(sorted(per_user), mask, strict=True) if k} == users_half
