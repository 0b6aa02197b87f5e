"""Data-parallel training (ranker.distribution: data_parallel) equals single-device training.

The JAX run happens in a subprocess with two host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``): the same tiny model is trained from
the same seed and data with distribution none and data_parallel, and the final weights,
test predictions and loss history must agree to float32 tolerance. The batch size leaves a
short last batch (160 train rows = 3 x 48 + 16), so the zero-weight padding is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_ranker_fixtures import training_world, write_training_set

from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake
from tf_ranker.batches import RankerBatches
from tf_ranker.data import load_items, load_samples
from tf_ranker.train import make_distribution

TINY_RANKER = {"epochs": 2, "batch_size": 48, "early_stopping_patience": 5, "heads": 2,
               "attention_dim": 8, "mba_dim": 8, "id_dim": 4, "stat_dim": 4,
               "dnn_units": [16, 8], "seeds": [0]}

CHILD = r'''
import json, sys
import jax, keras, numpy as np
from saviorrec.config import Config
import tf_ranker.train as train

models = []

class Recorded(train.SaviorRanker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        models.append(self)

train.SaviorRanker = Recorded
out = {"device_count": jax.device_count(), "runs": {}}
for name, config_json in json.loads(sys.argv[1]).items():
    cfg = Config.model_validate(json.loads(config_json))
    if name == "bad_batch":
        try:
            train.run_train(cfg, variant="full", seed=0)
        except ValueError as e:
            out["bad_batch_error"] = str(e)
        out["distribution_after_error"] = repr(keras.distribution.distribution())
        continue
    meta = train.run_train(cfg, variant="full", seed=0)
    model = models[-1]
    shardings = [v.value.sharding for v in model.trainable_variables]
    out["runs"][name] = {
        "meta": {k: meta[k] for k in ("devices", "distribution", "backend", "history")},
        "weights": {v.path.split("/", 1)[1]: np.asarray(v.value).tolist()
                    for v in model.trainable_variables},
        "variable_devices": sorted({len(s.device_set) for s in shardings}),
        "replicated": all(s.is_fully_replicated for s in shardings),
        "distribution_after": repr(keras.distribution.distribution()),
    }
from tf_ranker.batches import data_placement
placed = data_placement(keras.distribution.DataParallel())(np.zeros((4, 3), "float32"))
out["placed"] = {"devices": len(placed.sharding.device_set), "shape": list(placed.shape),
                 "shard_rows": sorted(s.data.shape[0] for s in placed.addressable_shards)}
out["placed_without_distribution"] = data_placement(None) is None
print("RESULT" + json.dumps(out))
'''


def _cfg(root: Path, distribution: str, **ranker: object) -> Config:
    # seeded: both roots hold identical data
    return training_world(root, **{**TINY_RANKER, "distribution": distribution, **ranker})


@pytest.mark.timeout(600)
def test_data_parallel_on_two_devices_matches_one_device(tmp_path: Path) -> None:
    configs = {
        "none": _cfg(tmp_path / "none", "none"),
        "data_parallel": _cfg(tmp_path / "dp", "data_parallel"),
        # Batches built, and copied to the devices (data_placement), by two threads. Keras's
        # enqueuer hands batches to the epochs in another order than its one-thread path
        # (batches read ahead for the model's build go to the first epoch), so threads are
        # compared with threads.
        "none_threads": _cfg(tmp_path / "nonet", "none", input_workers=2),
        "data_parallel_threads": _cfg(tmp_path / "dpt", "data_parallel", input_workers=2),
        "bad_batch": _cfg(tmp_path / "bad", "data_parallel", batch_size=45),
    }
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    arg = json.dumps({k: c.model_dump_json() for k, c in configs.items()})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=580, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])

    assert result["device_count"] == 2
    # data_placement splits a batch over the two devices on its first axis
    assert result["placed"] == {"devices": 2, "shape": [4, 3], "shard_rows": [2, 2]}
    assert result["placed_without_distribution"]
    none, dp = result["runs"]["none"], result["runs"]["data_parallel"]
    assert none["meta"]["devices"] == 1 and dp["meta"]["devices"] == 2
    assert dp["meta"]["distribution"] == "data_parallel" and dp["meta"]["backend"] == "jax"
    # Every variable lives on both devices (replicated), against one device without a mesh.
    assert dp["variable_devices"] == [2] and dp["replicated"]
    assert none["variable_devices"] == [1]
    # The global distribution is restored after the run (and after a failed one).
    assert none["distribution_after"] == dp["distribution_after"] == "None"
    assert result["distribution_after_error"] == "None"
    assert "ranker.batch_size=45" in result["bad_batch_error"]
    assert "2 devices" in result["bad_batch_error"]

    # Same training: validation curve, final weights and test predictions. (The logged train
    # "loss" differs: Keras averages it over batches weighted by their row count, padding included.)
    for name, single in (("data_parallel", "none"), ("data_parallel_threads", "none_threads")):
        run, one = result["runs"][name], result["runs"][single]
        assert run["meta"]["devices"] == 2 and one["meta"]["devices"] == 1
        for key in ("val_loss", "val_auc"):
            np.testing.assert_allclose(run["meta"]["history"][key], one["meta"]["history"][key],
                                       rtol=1e-4, atol=1e-6, err_msg=f"{name} {key}")
        assert set(run["weights"]) == set(one["weights"])
        for path, value in one["weights"].items():
            np.testing.assert_allclose(run["weights"][path], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {path}")
    moved = 0.0
    for path in none["weights"]:
        if "codebook" in path:  # zero-initialised: training moved it, so the match is not vacuous
            moved = max(moved, float(np.abs(np.asarray(none["weights"][path])).max()))
    assert moved > 1e-4
    scores = {}
    for name, cfg in configs.items():
        if name != "bad_batch":
            path = Lake.from_config(cfg).ranker("full", 0).predictions
            scores[name] = pq.read_table(path)["score"].to_numpy()
    assert scores["none"].shape == (48,)  # every test row, none of the padding
    np.testing.assert_allclose(scores["data_parallel"], scores["none"], atol=1e-6)
    np.testing.assert_allclose(scores["data_parallel_threads"], scores["none_threads"], atol=1e-6)


def test_pad_last_fills_the_short_batch_with_zero_weight_rows(config: Config) -> None:
    write_training_set(config)
    lake = Lake.from_config(config)
    samples, items = load_samples(lake.training("train")), load_items(lake.training_items)
    batches = RankerBatches(samples, items, batch_size=64, shuffle=True, seed=1, pad_last=True)
    assert len(batches) == 3  # 160 rows: 64 + 64 + 32 real rows
    inputs, labels, weights = batches[0]
    assert weights.tolist() == [1.0] * 64
    inputs, labels, weights = batches[2]
    assert inputs["item_id"].shape == (64,) and labels.shape == (64, 1)
    assert weights.tolist() == [1.0] * 32 + [0.0] * 32
    order = batches.order
    np.testing.assert_array_equal(inputs["item_id"][:32], samples.item_id[order[128:]])
    np.testing.assert_array_equal(inputs["item_id"][32:], samples.item_id[order[:32]])
    (only_inputs,) = RankerBatches(samples, items, batch_size=64, with_labels=False,
                                   pad_last=True)[2]
    assert only_inputs["seq_item_ids"].shape == (64, 5)
    # Fewer rows than one batch: the filling wraps around the order.
    tiny = RankerBatches(load_samples(lake.training("test")), items, batch_size=100, pad_last=True)
    _, _, weights = tiny[0]
    assert weights.shape == (100,) and weights.sum() == 48


def test_data_parallel_needs_jax(config: Config) -> None:
    cfg = config.with_overrides(ranker={"distribution": "data_parallel"})
    assert make_distribution(config) is None
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        make_distribution(cfg)  # this process runs TensorFlow
