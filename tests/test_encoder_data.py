"""Next-click evaluation pairs, co-click pairs and faiss Hit@K against hand-worked answers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoder_torch.data import coclick_pairs, next_click_pairs
from encoder_torch.hit_rate import i2i_hit_rate, retrieve
from saviorrec.lake import Lake
from saviorrec.schema import COCLICK, SAMPLES, Table


def write_folder(table: pa.Table, folder: Path, schema: Table) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(schema.arrow_schema()), folder / "part-0.parquet")


def _ts(day: int) -> datetime:
    return datetime(2020, 1, day, tzinfo=UTC)


def test_next_click_pairs(tmp_path: Path) -> None:
    rows = [  # user, item, label, day, split
        (1, 5, 1, 3, "test"), (1, 3, 0, 4, "test"), (1, 7, 1, 5, "test"), (1, 8, 1, 6, "test"),
        (1, 2, 1, 1, "train"), (2, 9, 1, 4, "test"), (2, 4, 1, 2, "valid"), (3, 6, 1, 7, "test"),
        (3, 1, 1, 7, "test"),  # same time: ordered by item_id -> 1 then 6
    ]
    table = pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "label": [r[2] for r in rows],
        "rating": [4.0] * len(rows), "event_timestamp": [_ts(r[3]) for r in rows],
        "split": [r[4] for r in rows]})
    lake = Lake(tmp_path)
    write_folder(table, lake.spark("samples"), SAMPLES)
    queries, targets = next_click_pairs(lake, split="test")
    assert list(zip(queries.tolist(), targets.tolist(), strict=True)) == [(5, 7), (7, 8), (1, 6)]
    with pytest.raises(ValueError, match="no 'holdout' rows"):
        next_click_pairs(lake, split="holdout")


def test_coclick_pairs_unordered_unique_and_unknown_ids(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    table = pa.table({"item_id": [10, 20, 10, 30], "partner_id": [20, 10, 30, 10],
                      "count": [2, 2, 3, 3], "score": [1.0, 1.0, 0.5, 0.5], "rank": [1, 1, 2, 1]})
    write_folder(table, lake.spark("coclick"), COCLICK)
    pairs = coclick_pairs(lake, np.array([10, 20, 30]))
    assert pairs.tolist() == [[0, 1], [0, 2]]  # rows of items 10-20 and 10-30, once each
    with pytest.raises(ValueError, match="not in items.parquet"):
        coclick_pairs(lake, np.array([10, 20]))


def test_hit_rate_by_hand() -> None:
    item_ids = np.array([1, 2, 3, 4])
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    found = retrieve(emb, item_ids, np.array([1, 3]), k=1)
    assert found[1].tolist() == [2] and found[3].tolist() == [2]  # the query itself is excluded
    # (1 -> 2) hit, (3 -> 4) miss, (1 -> 3) miss at k=1; at k=2, 1's list is [2, 3]
    q, t = np.array([1, 3, 1]), np.array([2, 4, 3])
    assert i2i_hit_rate(embeddings=emb, item_ids=item_ids, queries=q, targets=t, k=1) == pytest.approx(1 / 3)
    assert i2i_hit_rate(embeddings=emb, item_ids=item_ids, queries=q, targets=t, k=2) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_agree_on_easy_data(kind: str) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(1, 301)
    q = ids[:50]
    exact = retrieve(emb, ids, q, k=5)
    approx = retrieve(emb, ids, q, k=5, index_kind=kind)
    overlap = np.mean([len(set(exact[i]) & set(approx[i])) / 5 for i in q.tolist()])
    assert overlap > 0.8
