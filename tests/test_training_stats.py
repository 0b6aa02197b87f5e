"""The training set's statistics table: numbering, the rows that point into it, expansion."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from saviorrec.schema import ITEM_STATS, SEQ_STATS_ROW, TRAINING_STATS
from saviorrec.training_stats import STATS, compact, expand, stats_table
from tf_ranker.data import StatsLookup


def day(d: int) -> datetime:
    return datetime(2024, 1, d, tzinfo=UTC)


def item_stats(rows: list[tuple[int, int, int]]) -> pa.Table:
    """(item, day, pv) rows; the other statistics follow pv."""
    return pa.table({
        "item_id": [r[0] for r in rows], "event_timestamp": [day(r[1]) for r in rows],
        "pv": [r[2] for r in rows], "clicks": [r[2] // 2 for r in rows],
        "ctr": [0.5 for _ in rows], "pv_recent": [r[2] for r in rows],
        "clicks_recent": [r[2] // 2 for r in rows], "ctr_recent": [0.25 for _ in rows],
        "pv_bucket": [min(r[2], 3) for r in rows],
    }).cast(ITEM_STATS.arrow_schema())


def test_rows_are_numbered_by_item_then_time_after_the_defaults() -> None:
    table = stats_table(item_stats([(5, 2, 20), (3, 1, 7), (5, 1, 10)]))
    TRAINING_STATS.validate_arrow(table)
    assert table["item_id"].to_pylist() == [0, 3, 5, 5]
    assert table["pv"].to_pylist() == [0.0, 7.0, 10.0, 20.0]
    assert table["pv_bucket"].to_pylist() == [0, 3, 3, 3]
    assert table["event_timestamp"][2].as_py() == day(1)


def test_two_rows_of_one_item_at_one_time_are_named() -> None:
    with pytest.raises(ValueError, match="item_id=5"):
        stats_table(item_stats([(5, 2, 20), (3, 1, 7), (5, 2, 21)]))


def test_expand_gives_each_position_its_rows_statistics() -> None:
    stats = stats_table(item_stats([(3, 1, 7), (5, 1, 10)]))
    samples = pa.table({SEQ_STATS_ROW: pa.array([[0, 2, 1], [1, 0, 0]], pa.list_(pa.int32()))})
    got = expand(samples, stats)
    assert got["seq_pv"].to_pylist() == [[0.0, 10.0, 7.0], [7.0, 0.0, 0.0]]
    assert got["seq_pv_bucket"].to_pylist() == [[0, 3, 3], [3, 0, 0]]
    bad = pa.table({SEQ_STATS_ROW: pa.array([[0, 3]], pa.list_(pa.int32()))})
    with pytest.raises(ValueError, match="outside the statistics table's 3 rows"):
        expand(bad, stats)


def test_compact_then_expand_gives_the_wide_table_back() -> None:
    rng = np.random.default_rng(0)
    wide = {}
    for split, n in (("train", 7), ("test", 4)):
        ids = rng.integers(0, 4, (n, 3))  # 0 = padding
        columns = {"seq_item_ids": pa.array(list(ids), pa.list_(pa.int64())),
                   "event_timestamp": pa.array([day(1 + i) for i in range(n)],
                                               pa.timestamp("us", tz="UTC"))}
        for name in STATS:
            values = np.where(ids == 0, 0, rng.integers(1, 50, ids.shape))
            columns["seq_" + name] = pa.array(
                list(values.astype("int64" if name == "pv_bucket" else "float32")),
                pa.list_(pa.int64() if name == "pv_bucket" else pa.float32()))
        wide[split] = pa.table(columns)
    compacted, stats = compact(wide)
    TRAINING_STATS.validate_arrow(stats)
    assert stats.num_rows == 1 + sum(int((np.array(t["seq_item_ids"].to_pylist()) != 0).sum())
                                     for t in wide.values())
    for split, table in wide.items():
        assert "seq_pv" not in compacted[split].column_names
        back = expand(compacted[split], stats)
        for name in STATS:
            assert back["seq_" + name].to_pylist() == table["seq_" + name].to_pylist(), name


def test_dense_lookup_gathers_what_it_was_given() -> None:
    rng = np.random.default_rng(1)
    seq_stats = rng.random((5, 4, 6)).astype("float32")
    buckets = rng.integers(0, 5, (5, 4))
    lookup, rows = StatsLookup.dense(seq_stats, buckets)
    assert rows.dtype == np.int32 and rows.min() == 1
    np.testing.assert_array_equal(lookup.stats[rows], seq_stats)
    np.testing.assert_array_equal(lookup.pv_bucket[rows], buckets)
    assert not lookup.stats[0].any() and lookup.pv_bucket[0] == 0
