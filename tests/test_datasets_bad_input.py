"""Bad input on small hand-written MovieLens folders: each case under both policies.

With ``bad_rows: error`` the message names the file, the row (CSV line, header = line 1), the
column and the value; with ``skip`` the row is dropped and counted under its file and reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from saviorrec.config import DataConfig
from saviorrec.datasets.badrows import BadInputError
from saviorrec.datasets.movielens import load_movielens

MOVIES = ["movieId,title,genres", "1,Alpha (1999),Drama", "2,Beta (2001),Comedy|Drama",
          "3,Gamma (2003),(no genres listed)"]
GOOD_RATINGS = ["1,1,4.0,1000000000", "1,2,3.5,1000000100", "2,1,5.0,1000000200"]
HEADER = "userId,movieId,rating,timestamp"


def write_folder(root: Path, ratings: list[str], movies: list[str] = MOVIES,
                 **optional: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text("\n".join([HEADER, *ratings]) + "\n")
    (root / "movies.csv").write_text("\n".join(movies) + "\n")
    for name, lines in optional.items():
        (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return root


# (bad ratings line, column, value as written, reason); the bad line is the 3rd data row, i.e.
# CSV line 4 (header is line 1).
RATING_CASES = [
    ("1,9,4.0,1000000300", "movieId", "9", "unknown_item"),
    ("1,1,3.0,1000000000", "timestamp", "1000000000", "duplicate"),
    ("2,2,7.0,1000000300", "rating", "7.0", "rating_out_of_range"),
    ("2,2,0.0,1000000300", "rating", "0.0", "rating_out_of_range"),
    ("2,2,3.0,yesterday", "timestamp", "yesterday", "bad_timestamp"),
    ("2,2,3.0,", "timestamp", "", "bad_timestamp"),
    ("2,2,3.0,2001-09-09", "timestamp", "2001-09-09", "bad_timestamp"),
    ("u2,2,3.0,1000000300", "userId", "u2", "bad_id"),
    ("2,2.5,3.0,1000000300", "movieId", "2.5", "bad_id"),
    ("2,0,3.0,1000000300", "movieId", "0", "bad_id"),  # 0 is the padding id
    ("2,2,four,1000000300", "rating", "four", "bad_rating"),
]


@pytest.mark.parametrize(("line", "column", "value", "reason"), RATING_CASES)
def test_bad_rating_row_errors_with_file_row_column_value(
    tmp_path: Path, line: str, column: str, value: str, reason: str
) -> None:
    folder = write_folder(tmp_path / "ml", [*GOOD_RATINGS[:2], line, GOOD_RATINGS[2]])
    with pytest.raises(BadInputError) as err:
        load_movielens(folder, DataConfig(bad_rows="error"))
    message = str(err.value)
    assert str(folder / "ratings.csv") in message
    assert "row 4," in message
    assert f"column {column!r}" in message
    assert f"value {value!r}" in message
    assert reason in message


@pytest.mark.parametrize(("line", "column", "value", "reason"), RATING_CASES)
def test_bad_rating_row_is_skipped_and_counted(
    tmp_path: Path, line: str, column: str, value: str, reason: str
) -> None:
    folder = write_folder(tmp_path / "ml", [*GOOD_RATINGS[:2], line, GOOD_RATINGS[2]])
    data = load_movielens(folder, DataConfig(bad_rows="skip"))
    assert data.skipped == {"ratings.csv": {reason: 1}}
    rows = sorted(zip(data.events["user_id"].to_pylist(), data.events["item_id"].to_pylist(),
                      data.events["rating"].to_pylist(), strict=True))
    assert rows == [(1, 1, 4.0), (1, 2, 3.5), (2, 1, 5.0)]


def test_skip_counts_every_reason_exactly(tmp_path: Path) -> None:
    ratings = [*GOOD_RATINGS, *(case[0] for case in RATING_CASES)]
    movies = [*MOVIES, "x,Bad id,Drama", "2,Beta again,Drama", "4,,Drama"]
    folder = write_folder(
        tmp_path / "ml", ratings, movies,
        tags=["userId,movieId,tag,timestamp", "1,1,moody,1", "1,1,moody,2", "1,9,lost,3",
              "1,2, ,4", "2,1,slow,5"],
        overviews=["movieId,overview", "1,First.", "1,Again.", "9,Nobody.", "2,"],
    )
    data = load_movielens(folder, DataConfig(bad_rows="skip"))
    assert data.skipped == {
        "movies.csv": {"bad_id": 1, "duplicate": 1, "empty_title": 1},
        "overviews.csv": {"duplicate": 1, "empty_value": 1, "unknown_item": 1},
        "ratings.csv": {"bad_id": 3, "bad_rating": 1, "bad_timestamp": 3, "duplicate": 1,
                        "rating_out_of_range": 2, "unknown_item": 1},
        "tags.csv": {"empty_value": 1, "unknown_item": 1},
    }
    assert data.events.num_rows == len(GOOD_RATINGS)
    items = data.items.to_pylist()
    assert [i["item_id"] for i in items] == [1, 2, 3]
    assert items[1]["title"] == "Beta (2001)"  # the first of the duplicated ids is kept
    assert [i["tags"] for i in items] == ["moody, slow", None, None]
    assert [i["overview"] for i in items] == ["First.", None, None]
    assert [i["genres"] for i in items] == ["Drama", "Comedy|Drama", None]
    assert data.absent == ["links.csv", "posters"]


@pytest.mark.parametrize(("file", "lines", "row", "column", "value"), [
    ("movies", [*MOVIES, "1,Alpha twice,Drama"], 5, "movieId", "1"),
    ("movies", [*MOVIES[:2], "two,Beta,Drama"], 3, "movieId", "two"),
    ("movies", [*MOVIES, "7,,Drama"], 5, "title", ""),
    ("tags", ["userId,movieId,tag,timestamp", "1,1,fine,1", "1,8,lost,2"], 3, "movieId", "8"),
    ("overviews", ["movieId,overview", "3,Fine.", "1,\"Two, words.\"", "1,Again."], 4,
     "movieId", "1"),
])
def test_bad_rows_in_other_files_name_the_file(
    tmp_path: Path, file: str, lines: list[str], row: int, column: str, value: str
) -> None:
    optional = {} if file == "movies" else {file: lines}
    movies = lines if file == "movies" else MOVIES
    folder = write_folder(tmp_path / "ml", GOOD_RATINGS[:1], movies, **optional)
    with pytest.raises(BadInputError) as err:
        load_movielens(folder, DataConfig())
    assert f"{folder / (file + '.csv')}: row {row}, column {column!r}: value {value!r}" in str(
        err.value)


@pytest.mark.parametrize("name", ["ratings.csv", "movies.csv"])
def test_missing_required_file_is_named(tmp_path: Path, name: str) -> None:
    folder = write_folder(tmp_path / "ml", GOOD_RATINGS)
    (folder / name).unlink()
    for policy in ("error", "skip"):
        with pytest.raises(BadInputError, match=rf"{name}: required file is missing"):
            load_movielens(folder, DataConfig(bad_rows=policy))


def test_missing_folder_and_missing_column(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        load_movielens(tmp_path / "nowhere", DataConfig())
    folder = write_folder(tmp_path / "ml", GOOD_RATINGS)
    (folder / "ratings.csv").write_text("userId,movieId,score,timestamp\n1,1,4.0,1000000000\n")
    with pytest.raises(BadInputError, match=r"ratings.csv: header .* lacks column\(s\) \['rating'\]"):
        load_movielens(folder, DataConfig(bad_rows="skip"))


def test_optional_files_absent_are_reported(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "ml", GOOD_RATINGS)
    data = load_movielens(folder, DataConfig())
    assert data.absent == ["tags.csv", "overviews.csv", "links.csv", "posters"]
    assert data.items["tags"].null_count == data.items["overview"].null_count == 3
    assert data.items["image_path"].null_count == 3


def test_custom_rating_range_and_posters(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "ml", ["1,1,1.0,1000000000", "1,2,10.0,1000000100"])
    (folder / "posters").mkdir()
    (folder / "posters" / "2.jpg").write_bytes(b"\xff\xd8\xff")
    (folder / "posters" / "77.jpg").write_bytes(b"\xff\xd8\xff")
    data = load_movielens(folder, DataConfig(rating_min=1.0, rating_max=10.0))
    assert data.events["rating"].to_pylist() == [1.0, 10.0]
    assert data.items["image_path"].to_pylist() == [None, str(folder / "posters" / "2.jpg"), None]
    assert data.posters_unmatched == 1
    with pytest.raises(BadInputError, match=r"row 3, column 'rating': value '10.0'"):
        load_movielens(folder, DataConfig())
