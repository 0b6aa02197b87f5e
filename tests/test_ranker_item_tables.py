"""On-device item tables (ranker.item_tables: device) train the same model as host gathering."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_ranker_fixtures import training_world

from saviorrec.lake import Lake
from saviorrec.ranker_inputs import ITEM_TABLE_INPUTS, STATS_TABLE_INPUTS
from tf_ranker.batches import RankerBatches
from tf_ranker.data import ItemLookup, load_items, load_samples
from tf_ranker.item_tables import ItemTableRanker
from tf_ranker.packed import PackLayout
from tf_ranker.train import run_train


def test_device_gather_equals_host_gather(tmp_path: Path) -> None:
    cfg = training_world(tmp_path, batch_size=64)
    lake = Lake.from_config(cfg)
    items = load_items(lake.training_items)
    # A table one row short: the last item id reads row 0 on both paths.
    short = ItemLookup(items.embedding[:-1], items.semantic_ids[:-1])
    test = load_samples(lake.training("test"))
    host = RankerBatches(test, short, batch_size=64, with_labels=False)[0][0]
    ids_only = RankerBatches(test, short, batch_size=64, with_labels=False,
                             gather_items=False)[0][0]
    gathered = (*ITEM_TABLE_INPUTS, *STATS_TABLE_INPUTS)
    assert not set(gathered) & set(ids_only) and "seq_stats_row" in ids_only

    probe: dict[str, np.ndarray] = {}

    class Recorder(keras.Model):
        def call(self, inputs, training=None):
            assert "seq_stats_row" not in inputs  # the ranker sees the statistics, not rows
            probe.update({k: keras.ops.convert_to_numpy(inputs[k]) for k in gathered})
            return keras.ops.zeros((keras.ops.shape(inputs["item_id"])[0], 1))

    ItemTableRanker(Recorder(), short, test.stats_table)(ids_only)
    assert probe["seq_stats"].shape == (len(test), 5, 6) and probe["seq_stats"].any()
    for key in gathered:
        np.testing.assert_array_equal(probe[key], host[key].astype(probe[key].dtype), err_msg=key)


def test_packed_batches_unpack_to_the_same_inputs(tmp_path: Path) -> None:
    cfg = training_world(tmp_path, batch_size=64)
    lake = Lake.from_config(cfg)
    items, test = load_items(lake.training_items), load_samples(lake.training("test"))
    layout = PackLayout(seq_len=test.seq_item_ids.shape[1])
    plain = RankerBatches(test, items, batch_size=64, shuffle=True, seed=2, gather_items=False,
                          pad_last=True)
    packed = RankerBatches(test, items, batch_size=64, shuffle=True, seed=2, gather_items=False,
                           pad_last=True, packed=layout)
    # Three epochs: the packed batches of epochs 1 and 2 come from rows gathered in the
    # background; each epoch's order must still be the plain batches' order.
    orders = []
    for _epoch in range(3):
        for i in range(len(plain)):
            (want, labels, weights), (got, got_labels, got_weights) = plain[i], packed[i]
            assert set(got) == {"packed_floats", "packed_ints"}
            assert got["packed_ints"].dtype == np.int32
            assert got["packed_floats"].dtype == np.float32
            unpacked = layout.unpack(got["packed_floats"], got["packed_ints"])
            assert unpacked.keys() == want.keys()
            for key, value in want.items():
                np.testing.assert_array_equal(np.asarray(unpacked[key]), value, err_msg=key)
            np.testing.assert_array_equal(got_labels, labels)
            np.testing.assert_array_equal(got_weights, weights)
        assert len(test) % 64 and weights.sum() == len(test) % 64  # the last batch was padded
        orders.append(packed.order.copy())
        plain.on_epoch_end()
        packed.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    with pytest.raises(ValueError, match="ids only"):
        RankerBatches(test, items, batch_size=64, packed=layout)
    too_big = dataclasses.replace(test, item_id=test.item_id + (1 << 31))
    with pytest.raises(ValueError, match="int32"):
        layout.pack(too_big)


@pytest.mark.parametrize("variant", ["full"])
def test_training_with_device_tables_matches_host_tables(tmp_path: Path, variant: str) -> None:
    scores, weights = {}, {}
    for mode, packed in (("host", False), ("device", False), ("device_packed", True)):
        tables = mode.split("_")[0]
        cfg = training_world(tmp_path / mode, epochs=2, batch_size=64, item_tables=tables,
                             packed_inputs=packed, input_workers=2, early_stopping_patience=5)
        meta = run_train(cfg, variant=variant, seed=0)
        assert meta["item_tables"] == tables
        out = Lake.from_config(cfg).ranker_dir(variant, 0)
        scores[mode] = pq.read_table(out / "predictions_test.parquet")["score"].to_numpy()
        model = keras.saving.load_model(out / "model.keras", compile=False)
        weights[mode] = [np.asarray(w) for w in model.get_weights()]
        assert json.loads((out / "meta.json").read_text())["test_auc"] == meta["test_auc"]
    # the saved model is the bare ranker in every case (same weights, no item table inside)
    for mode in ("device", "device_packed"):
        assert len(weights["host"]) == len(weights[mode])
        for a, b in zip(weights["host"], weights[mode], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(scores["host"], scores[mode], atol=1e-5)
