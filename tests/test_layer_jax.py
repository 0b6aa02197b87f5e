"""The layers run under JAX (a subprocess: the Keras backend is fixed at import) and give the
TensorFlow outputs for the same weights and inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from saviorrec.config import REPO_ROOT

SCRIPT = r'''
import sys
import keras
import numpy as np
from tf_ranker.layers import (BidirectionalTargetAttention, LogCountTransform,
                              ModalBehaviorAlignment, SimTier, TargetAttention)

data = dict(np.load(sys.argv[1]))
h_cand, h_seq, z_cand, z_seq, mask = (data[k] for k in ("h_cand", "h_seq", "z_cand", "z_seq", "mask"))

def weights(layer, prefix):
    layer.set_weights([data[f"{prefix}{i}"] for i in range(len(layer.weights))])
    return layer

ta = TargetAttention(2, 4)
ta.build(h_cand.shape, h_seq.shape, h_seq.shape)
bta = BidirectionalTargetAttention(2, 4)
bta.build(h_cand.shape, h_seq.shape, z_cand.shape, z_seq.shape)
mba = ModalBehaviorAlignment(2, 3, 2)
mba.build(z_seq.shape, data["ids"].shape)
out = {
    "backend": np.array(keras.backend.backend()),
    "ta": weights(ta, "ta")(h_cand, h_seq, h_seq, mask),
    # one sequence (batch 1) for both candidates: the serving path of TargetAttention.attend
    "ta_shared": ta.attend(h_cand, *ta.project_sequence(h_seq[:1], h_seq[:1]), mask[:1]),
    "bta": weights(bta, "bta")(h_cand, h_seq, z_cand, z_seq, mask),
    "mba": weights(mba, "mba")(z_seq, data["ids"]),
    "simtier": SimTier(4)(z_cand, z_seq, mask),
    "stats": LogCountTransform()(data["stats"]),
}
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
'''


def test_layers_under_jax_match_tensorflow(tmp_path: Path) -> None:
    from tf_ranker.layers import (
        BidirectionalTargetAttention,
        LogCountTransform,
        ModalBehaviorAlignment,
        SimTier,
        TargetAttention,
    )

    rng = np.random.default_rng(0)
    data = {
        "h_cand": rng.standard_normal((2, 3)), "h_seq": rng.standard_normal((2, 4, 3)),
        "z_cand": rng.standard_normal((2, 2)), "z_seq": rng.standard_normal((2, 4, 2)),
        "stats": rng.random((2, 6)) * 10,
    }
    data = {k: v.astype("float32") for k, v in data.items()}
    data["mask"] = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    data["ids"] = rng.integers(0, 3, (2, 4, 3))
    ta = TargetAttention(2, 4)
    ta.build((2, 3), (2, 4, 3), (2, 4, 3))
    bta = BidirectionalTargetAttention(2, 4)
    bta.build((2, 3), (2, 4, 3), (2, 2), (2, 4, 2))
    mba = ModalBehaviorAlignment(2, 3, 2)
    mba.build((2, 4, 2), (2, 4, 3))
    for prefix, layer in (("ta", ta), ("bta", bta), ("mba", mba)):
        values = [rng.standard_normal(w.shape).astype("float32") for w in layer.weights]
        layer.set_weights(values)
        data.update({f"{prefix}{i}": v for i, v in enumerate(values)})
    np.savez(tmp_path / "in.npz", **data)

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jax_out = np.load(tmp_path / "out.npz")
    assert str(jax_out["backend"]) == "jax"
    d = data
    expected = {
        "ta": ta(d["h_cand"], d["h_seq"], d["h_seq"], d["mask"]),
        "ta_shared": ta(d["h_cand"], np.repeat(d["h_seq"][:1], 2, 0),
                        np.repeat(d["h_seq"][:1], 2, 0), np.repeat(d["mask"][:1], 2, 0)),
        "bta": bta(d["h_cand"], d["h_seq"], d["z_cand"], d["z_seq"], d["mask"]),
        "mba": mba(d["z_seq"], d["ids"]),
        "simtier": SimTier(4)(d["z_cand"], d["z_seq"], d["mask"]),
        "stats": LogCountTransform()(d["stats"]),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(jax_out[name], np.asarray(value), atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(jax_out["ta"][1], 0.0)  # masked-out sequence under JAX too
