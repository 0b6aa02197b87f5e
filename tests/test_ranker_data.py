"""The numpy data path: parquet -> arrays, item features joined by id, batches, synthetic."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ranker_fixtures import write_training_set

from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.training_stats import expand
from tf_ranker import synthetic_inputs
from tf_ranker.batches import RankerBatches
from tf_ranker.data import fixed_lists, load_items, load_samples, make_inputs


def test_item_features_joined_by_id_for_candidate_and_every_position(config: Config) -> None:
    truth = write_training_set(config)
    lake = Lake.from_config(config)
    items = load_items(lake.training_items)
    samples = load_samples(lake.training("valid"))
    # The positions' statistics resolved by pyarrow (saviorrec.training_stats.expand), against
    # make_inputs's numpy gather.
    raw = expand(pq.read_table(lake.training("valid")),
                 pq.read_table(lake.training_stats)).to_pylist()
    assert items.embedding.shape == (31, 8) and not items.embedding[0].any()  # row 0 = padding
    rows = np.array([3, 0, 7])
    x = make_inputs(samples, items, rows)
    for out_row, row in enumerate(rows):
        record = raw[row]
        assert x["item_id"][out_row] == record["item_id"]
        np.testing.assert_array_equal(x["item_embedding"][out_row], truth["embedding"][record["item_id"]])
        np.testing.assert_array_equal(x["item_stats"][out_row],
                                      np.float32([record["pv"], record["clicks"], record["ctr"],
                                                  record["pv_recent"], record["clicks_recent"],
                                                  record["ctr_recent"]]))
        for pos, item in enumerate(record["seq_item_ids"]):
            expected = truth["embedding"][item] if item else np.zeros(8, "float32")
            np.testing.assert_array_equal(x["seq_embedding"][out_row, pos], expected)
            expected_ids = truth["semantic_ids"][item] if item else np.zeros(3, "int64")
            np.testing.assert_array_equal(x["seq_semantic_ids"][out_row, pos], expected_ids)
            assert x["seq_stats"][out_row, pos, 3] == np.float32(record["seq_pv_recent"][pos])
        assert x["seq_pv_bucket"][out_row].tolist() == record["seq_pv_bucket"]


def test_batches_cover_each_row_once_per_epoch_reproducibly(config: Config) -> None:
    write_training_set(config)
    lake = Lake.from_config(config)
    samples, items = load_samples(lake.training("train")), load_items(lake.training_items)
    batches = RankerBatches(samples, items, batch_size=64, shuffle=True, seed=3)
    assert len(batches) == 3  # 160 rows: 64 + 64 + 32

    def epoch_ids() -> list[int]:
        seen = []
        for i in range(len(batches)):
            inputs, labels = batches[i]
            assert labels.shape == (len(inputs["item_id"]), 1) and labels.dtype == np.float32
            seen += [int(r) for r in batches.order[i * 64:(i + 1) * 64]]
        return seen

    first = epoch_ids()
    assert sorted(first) == list(range(160)) and first != list(range(160))
    batches.on_epoch_end()
    second = epoch_ids()
    assert sorted(second) == list(range(160)) and second != first
    again = RankerBatches(samples, items, batch_size=64, shuffle=True, seed=3)
    assert again.order.tolist() == first


def test_synthetic_inputs_have_the_real_shapes() -> None:
    x, y = synthetic_inputs(batch_size=16, seq_len=50, embedding_dim=64, levels=8,
                            codebook_size=2048)
    assert x["seq_embedding"].shape == (16, 50, 64) and x["seq_embedding"].dtype == np.float32
    assert x["seq_semantic_ids"].shape == (16, 50, 9) and x["seq_semantic_ids"].max() < 2048
    assert x["item_stats"].shape == (16, 6) and x["seq_stats"].shape == (16, 50, 6)
    assert x["user_id"].dtype == np.int64 and y.shape == (16, 1)
    assert (x["seq_item_ids"] == 0).any()


def test_fixed_lists_by_hand() -> None:
    column = pa.chunked_array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9]]])  # two chunks
    got = fixed_lists(column, "float32")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert fixed_lists(pa.chunked_array([], pa.list_(pa.int64())), "int64").shape == (0, 0)
    with pytest.raises(ValueError, match=r"rows of lengths 1\.\.2, expected one fixed length"):
        fixed_lists(pa.chunked_array([[[1], [2, 3]]]), "int64")
