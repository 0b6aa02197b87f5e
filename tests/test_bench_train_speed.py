"""benchmarks/train_speed.py without a GPU: the world it trains on follows the lake's contract and
gives FuxiCTR the same rows, its epoch clock leaves Keras's batch dispatch alone, and its
figures are the arithmetic they claim. (The end-to-end ``--smoke`` run takes minutes on two
cores: the full SaviorRanker is ~1,000 samples/s on this CPU.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import load_benchmark

from saviorrec.lake import Lake
from tf_ranker.data import load_items, load_samples

ts = load_benchmark("train_speed")
SIZES = ts.WorldSizes(train_rows=2_000, valid_rows=300, test_rows=200, num_users=50,
                      num_items=400, seq_len=8, embedding_dim=8, levels=2, codebook_size=32,
                      latent_dim=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_speed_world")
    ts.build_world(root, SIZES, din_fit_rows=600, step_rows=64)
    return root


def test_lake_follows_the_contract_as_the_stages_write_it(world: Path) -> None:
    lake = Lake.from_config(ts.shipped_config(world, 1024, 2))
    train = load_samples(lake.training("train"))  # validates TRAINING_SAMPLES
    assert len(train) == 2_000 and len(load_samples(lake.training("test"))) == 200
    seq = train.seq_item_ids
    assert seq.shape == (2_000, 8) and seq.min() >= 0 and seq.max() < 400
    # Left-padded: once a position holds an item, every later one does; statistics 0 at padding.
    real = seq > 0
    assert (np.diff(real.astype(int), axis=1) >= 0).all()
    stored_len = pq.read_table(lake.training("train"), columns=["seq_len"])["seq_len"].to_numpy()
    np.testing.assert_array_equal(stored_len, real.sum(axis=1))
    assert (train.seq_stats[~real] == 0).all() and (train.seq_pv_bucket[~real] == 0).all()
    assert ((train.pv_bucket >= 0) & (train.pv_bucket < 5)).all()

    items = load_items(lake.training_items)
    assert items.num_rows == 400 and (items.embedding[0] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(items.embedding[1:], axis=1), 1.0, rtol=1e-5)
    assert items.semantic_ids.shape == (400, 3) and (items.semantic_ids[:, -1] == 0).all()
    np.testing.assert_array_equal(items.semantic_ids[1:, 0], np.arange(1, 400) % ts.N_TOPICS)
    assert np.load(lake.rqvae_codebooks).shape == (2, 32, 4)
    assert json.loads(lake.rqvae_version.read_text())["rqvae_version"]

    # Learnable: a candidate of the user's favourite topic is clicked at 0.5, others at 0.1.
    favourite = train.item_id % ts.N_TOPICS == train.user_id % ts.N_TOPICS
    assert train.label[favourite].mean() == pytest.approx(0.5, abs=0.06)
    assert train.label[~favourite].mean() == pytest.approx(0.1, abs=0.04)


def test_fuxictr_files_hold_the_lakes_rows(world: Path) -> None:
    lake = Lake.from_config(ts.shipped_config(world, 1024, 2))
    fux = world / "fuxictr"
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["din_fit_rows"] == 600 and manifest["din_fit_valid_rows"] == 90  # 300 * 600/2000
    user_info = pq.read_table(fux / "user_info.parquet")["full_item_seq"].to_pylist()
    for split, rows, first in (("train", 600, 0), ("valid", 90, 600)):
        data = pq.read_table(fux / f"{split}.parquet").to_pydict()
        samples = load_samples(lake.training(split))
        assert data["user_index"] == list(range(first, first + rows))
        np.testing.assert_array_equal(data["item_index"], samples.item_id[:rows])
        np.testing.assert_array_equal(data["user_id"], samples.user_id[:rows])
        np.testing.assert_array_equal(data["label"], samples.label[:rows])
        for r in (0, rows // 2, rows - 1):
            seq = samples.seq_item_ids[r]
            assert user_info[first + r] == seq[seq > 0].tolist()
            assert data["seq_len"][r] == int((seq > 0).sum())
    item_info = pq.read_table(fux / "item_info.parquet")
    assert item_info["item_index"].to_pylist() == list(range(400))
    emb = pc.list_flatten(item_info["item_mm"]).to_numpy().reshape(400, 8)
    np.testing.assert_array_equal(emb, load_items(lake.training_items).embedding)


def test_epoch_clock_implements_no_per_batch_hook() -> None:
    import keras

    clock = ts.epoch_clock_class()()
    assert ts.per_batch_hooks(clock) == []
    # The detector itself: TerminateOnNaN checks every batch.
    assert ts.per_batch_hooks(keras.callbacks.TerminateOnNaN()) == ["on_batch_end"]
    from keras.src import backend

    if backend.IS_THREAD_SAFE:  # the backends with asynchronous batch dispatch (not TensorFlow)
        assert keras.callbacks.CallbackList([clock])._async_train
        assert not keras.callbacks.CallbackList(
            [clock, keras.callbacks.TerminateOnNaN()])._async_train


def test_epoch_summary_times_the_epochs_after_the_first() -> None:
    epochs = [{"epoch": 1, "train_s": 30.0, "validation_and_checkpoint_s": 2.0, "epoch_s": 32.0},
              {"epoch": 2, "train_s": 4.0, "validation_and_checkpoint_s": 1.0, "epoch_s": 5.0},
              {"epoch": 3, "train_s": 6.0, "validation_and_checkpoint_s": 1.0, "epoch_s": 7.0}]
    s = ts.epoch_summary(epochs, train_rows=1_000, valid_rows=100)
    assert s["timed_epochs"] == [2, 3]
    assert s["train_samples_per_s"] == 200.0  # 2 x 1000 rows / (4 + 6) s
    assert s["with_validation_samples_per_s"] == pytest.approx(2_000 / 12, abs=0.05)
    assert s["validation_samples_per_s"] == 100.0  # 2 x 100 rows / 2 s
    assert s["first_epoch_s"] == 32.0


def test_summary_ratios_and_targets() -> None:
    payload = {
        "ours": {"1024": {"train_samples_per_s": 900_000.0,
                          "with_validation_samples_per_s": 800_000.0,
                          "step_samples_per_s": 1_000_000.0}},
        "din": {"fuxictr_fit": {"1024": {"with_validation_samples_per_s": 100_000.0}},
                "best": {"1024": {"train_samples_per_s": 500_000.0, "best_mode": "default"}}},
    }
    row = ts.summarize(payload, [1024, 8192])["1024"]
    assert row["with_validation_vs_din_fuxictr_fit"] == 8.0
    assert row["with_validation_vs_din_best"] == 1.6
    assert row["step_vs_din_best"] == 2.0
    assert row["loop_share_of_step"] == 0.8
    assert row["targets_met"] == {"loop_costs_under_5pct_of_step": False,
                                  "with_validation_ge_2x_din_best": False,
                                  "with_validation_ge_1000000": False}
    assert ts.summarize(payload, [8192])["8192"]["step_vs_din_best"] is None


def test_bf16_summary_sits_beside_float32() -> None:
    payload = {
        "ours": {"1024": {"with_validation_samples_per_s": 800_000.0, "val_auc": 0.72}},
        "ours_bf16": {"1024": {"with_validation_samples_per_s": 950_000.0,
                               "step_samples_per_s": 1_200_000.0, "val_auc": 0.7185}},
        "din": {"fuxictr_fit": {}, "best": {}},
    }
    row = ts.summarize(payload, [1024])["1024"]
    assert row["ours_bf16_with_validation_samples_per_s"] == 950_000.0
    assert row["ours_bf16_step_samples_per_s"] == 1_200_000.0
    assert row["bf16_val_auc_minus_float32"] == pytest.approx(-0.0015)
    assert ts.summarize({**payload, "ours_bf16": {}}, [1024])["1024"][
        "bf16_val_auc_minus_float32"] is None


def _trace(events: list[tuple[str, str, float, float]]) -> list[dict]:
    """A Chrome trace as JAX's profiler writes it: a host process and a GPU process whose lines
    are a kernel stream and the XLA ops line; events (line, name, start us, duration us)."""
    lines = {"host": (1, 10), "stream": (2, 20), "ops": (2, 21)}
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 10, "args": {"name": "main"}},
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 20,
             "args": {"name": "Stream #13(Compute)"}},
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 21, "args": {"name": "XLA Ops"}}]
    return meta + [{"ph": "X", "pid": lines[line][0], "tid": lines[line][1], "name": name,
                    "ts": ts0, "dur": dur} for line, name, ts0, dur in events]


def test_trace_summary_is_the_arithmetic_of_the_kernels() -> None:
    events = _trace([
        ("host", "PjitFunction(train)", 0.0, 1_000.0),  # the window: 0 .. 1,000 us
        ("stream", "sm90_xmma_gemm_f32", 100.0, 200.0),
        ("stream", "loop_multiply_fusion", 250.0, 100.0),  # overlaps the gemm by 50 us
        ("stream", "input_reduce_fusion", 600.0, 100.0),
        ("stream", "sm90_xmma_gemm_f32", 800.0, 100.0),
        ("ops", "dot.12", 100.0, 200.0),  # another device line: not a kernel, not counted
    ])
    s = ts.summarize_trace(events, steps=2)
    # kernels: gemm 300 us, elementwise fusion 100, reduction 100 -> 500 us over 2 steps
    assert s["kernel_ms_per_step"] == 0.25
    assert s["by_kind_ms_per_step"] == {"matmul": 0.15, "fused elementwise": 0.05,
                                        "reduction": 0.05}
    # busy: union of [100, 350), [600, 700), [800, 900) = 450 us of a 1,000 us window
    assert s["device_busy_s"] == 0.00045
    assert s["device_busy_share_of_window"] == 0.45
    # span: first kernel start (100) to last kernel end (900) = 800 us; 450 / 800 busy
    assert s["device_span_s"] == 0.0008 and s["device_busy_share_of_span"] == 0.5625
    assert s["device_busy_ms_per_step"] == 0.225
    assert s["kernel_launches"] == 4 and s["kernels"] == 3
    assert s["top_kernels"][0] == {"name": "sm90_xmma_gemm_f32", "ms_per_step": 0.15,
                                   "share": 0.6}
    assert "error" in ts.summarize_trace(_trace([("host", "x", 0.0, 1.0)]), steps=1)
