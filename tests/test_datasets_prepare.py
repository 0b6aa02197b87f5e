"""``prepare(cfg)`` end to end: both tables pass the contract, the summary matches them, and a
second run replaces the first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from saviorrec.config import DATA_ENV, Config
from saviorrec.datasets.prepare import images_dir, prepare
from saviorrec.lake import Lake, read_table
from saviorrec.schema import EVENTS, ITEMS


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def test_movielens_prepare_writes_contract_tables_and_is_idempotent(
    config: Config, movielens_dir: Path
) -> None:
    cfg = config.with_overrides(data={"source_dir": str(movielens_dir), "user_fraction": 0.2})
    lake = Lake.from_config(cfg)
    first = prepare(cfg)
    assert first["events"] == read_table(lake.events, EVENTS).num_rows < 100_836 * 0.4

    full = prepare(config.with_overrides(data={"source_dir": str(movielens_dir)}))
    events, items = read_table(lake.events, EVENTS), read_table(lake.items, ITEMS)
    assert events.num_rows == full["events"] == 100_836  # replaced, not appended
    assert items.num_rows == full["items"] == 9_742
    assert full["items_with_image"] == 9_520
    assert full["items_with_overview"] == 9_202
    assert full["items_with_text"] == 9_742
    assert full["users"] == 610
    assert full["skipped_rows"] == {} and full["skipped_total"] == 0
    assert full["absent_files"] == []
    assert full["ratings_sha256"].startswith("80da8b3393dae325")
    assert json.loads(lake.prepare_summary.read_text()) == json.loads(json.dumps(full))
    assert _leftovers(lake.root) == []


def test_drop_items_without_events_keeps_exactly_the_rated_items(
    config: Config, movielens_dir: Path
) -> None:
    cfg = config.with_overrides(data={"source_dir": str(movielens_dir), "user_fraction": 0.2,
                                      "drop_items_without_events": True})
    lake = Lake.from_config(cfg)
    summary = prepare(cfg)
    events, items = read_table(lake.events, EVENTS), read_table(lake.items, ITEMS)
    rated = set(events["item_id"].to_pylist())
    assert set(items["item_id"].to_pylist()) == rated
    assert summary["items"] == len(rated)
    assert summary["items_dropped_without_events"] == 9_742 - len(rated) > 0


def test_movielens_prepare_reports_skips_and_absent_files(config: Config, tmp_path: Path) -> None:
    source = tmp_path / "tiny"
    source.mkdir()
    (source / "movies.csv").write_text("movieId,title,genres\n1,A (2000),Drama\n")
    (source / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,4.0,200\n1,1,9.0,300\n")
    cfg = config.with_overrides(data={"source_dir": str(source), "bad_rows": "skip"})
    summary = prepare(cfg)
    assert summary["skipped_rows"] == {"ratings.csv": {"rating_out_of_range": 1,
                                                       "unknown_item": 1}}
    assert summary["skipped_total"] == 2
    assert summary["events"] == 1
    assert summary["absent_files"] == ["tags.csv", "overviews.csv", "links.csv", "posters"]
    assert summary["items_with_image"] == summary["items_with_tags"] == 0


def test_synthetic_prepare_writes_items_images_and_events(config: Config) -> None:
    syn = {"n_events": 5_000, "n_items": 200, "n_users": 100, "n_topics": 5,
           "chunk_events": 2_000, "image_fraction": 0.5, "max_images": 60, "text_fraction": 0.8}
    cfg = config.with_overrides(data={"source": "synthetic"}, synthetic=syn)
    lake = Lake.from_config(cfg)
    summary = prepare(cfg)
    events, items = read_table(lake.events, EVENTS), read_table(lake.items, ITEMS)
    assert summary["events"] == events.num_rows == 5_000
    assert summary["users"] == len(pc.unique(events["user_id"]))
    assert items["item_id"].to_pylist() == list(range(1, 201))
    assert items["topic"].null_count == 0
    paths = [p for p in items["image_path"].to_pylist() if p is not None]
    assert summary["items_with_image"] == len(paths) == 60  # capped by max_images
    assert sorted(p.name for p in images_dir(lake).iterdir()) == sorted(Path(p).name
                                                                        for p in paths)
    with Image.open(paths[0]) as image:
        assert image.size == (32, 32) and image.format == "JPEG"
    titles = np.array(items["title"].to_pylist())
    assert summary["items_with_text"] == int((titles != "").sum())
    assert 0.65 < (titles != "").mean() < 0.95

    again = prepare(cfg)  # same seed: same tables, images replaced in place
    assert again == summary
    assert read_table(lake.events, EVENTS).equals(events)
    assert read_table(lake.items, ITEMS).equals(items)
    assert len(list(images_dir(lake).iterdir())) == 60
    assert _leftovers(lake.root) == []

    other = prepare(cfg.with_overrides(synthetic={"seed": 7}))
    assert other["events"] == 5_000
    assert not read_table(lake.events, EVENTS).equals(events)
