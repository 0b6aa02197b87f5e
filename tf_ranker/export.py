"""Export a trained ranker as a TensorFlow SavedModel for TF-Serving.

``run_export(cfg, variant="full", seed=0)`` reloads the trained ``.keras`` model under
TensorFlow (``compile=False``; train anywhere, e.g. JAX on a GPU, export here) and writes
Lake.export atomically: the SavedModel, its meta (model version, variant, rqvae_version, inputs)
and a sample request (a TF-Serving REST body built from real test rows).

The ``serving_default`` signature (saviorrec.ranker_inputs) scores N candidates for ONE user:
the user side [1, ...] and the sequence side [1, S, ...] once per request, the candidate side
[N, ...], output ``score`` float32 [N]. The
sequence side (MBA of the sequence items, attention keys and values) is computed once and
broadcast over the candidates. Item features (ids, statistics, embeddings, semantic ids) are
inputs: the serving app reads them from the Feast online store; the SavedModel holds no item
table. Serving must refuse semantic ids of another RQ-VAE version than the meta's.

Serve it with the TF-Serving container (the folder holds ``saved_model.pb`` of version 1)::

    docker run --rm -p 8501:8501 \\
        -v "$PWD/runs/movielens/export:/models/saviorrec/1:ro" \\
        -e MODEL_NAME=saviorrec tensorflow/serving
    curl -s -X POST -d @runs/movielens/export/sample_request.json \\
        http://localhost:8501/v1/models/saviorrec:predict
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from saviorrec import ranker_inputs
from saviorrec.config import Config
from saviorrec.lake import ExportFiles, Lake, atomic_path
from saviorrec.ranker_inputs import (
    BASE_SCORE,
    CANDIDATE,
    DTYPES,
    ITEM_ID,
    OUTPUT,
    SIGNATURE,
    inputs,
)
from saviorrec.schema import PADDING_ITEM_ID, TEST
from tf_ranker.data import load_items, load_samples, make_inputs
from tf_ranker.models import SaviorRanker

TOLERANCE = 1e-5


def serving_shapes(model: SaviorRanker) -> dict[str, list[int | None]]:
    """Input shapes of the serving signature (None = any size: N candidates, S positions)."""
    return ranker_inputs.serving_shapes(model.embedding_dim, model.semantic_id_width, model.use_base_score)


def sample_request(model: SaviorRanker, cfg: Config, max_candidates: int = 5) -> dict[str, Any]:
    """TF-Serving REST body: the first test user with a sequence, and a few test candidates."""
    lake = Lake.from_config(cfg)
    test = load_samples(lake.training(TEST))
    items = load_items(lake.training_items)
    nonempty = np.flatnonzero((test.seq_item_ids != PADDING_ITEM_ID).any(axis=1))
    first = int(nonempty[0]) if nonempty.size else 0
    rows = np.arange(first, min(first + max_candidates, len(test)))
    batch = make_inputs(test, items, rows, model.use_base_score)
    request = {}
    for spec in inputs(model.use_base_score):
        value = batch[spec.name] if spec.side == CANDIDATE else batch[spec.name][:1]
        request[spec.name] = value.tolist()
    return {"signature_name": SIGNATURE, "inputs": request}


def per_sample_inputs(request_inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The request tiled to one row per candidate (what the training-time model sees)."""
    arrays = {k: np.asarray(v, dtype=DTYPES[k]) for k, v in request_inputs.items()}
    n = arrays[ITEM_ID].shape[0]
    for spec in inputs(True):
        if spec.side != CANDIDATE and spec.name in arrays:
            arrays[spec.name] = np.repeat(arrays[spec.name], n, axis=0)
    return arrays


def _write_savedmodel(model: SaviorRanker, path: Path) -> None:
    import tensorflow as tf

    specs = {name: tf.TensorSpec(shape, DTYPES[name], name=name)
             for name, shape in serving_shapes(model).items()}

    def serve(inputs: dict[str, Any]) -> dict[str, Any]:
        return {OUTPUT: tf.reshape(model(inputs, training=False), [-1])}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[specs])
    archive.write_out(str(path), verbose=False)


def check_savedmodel(path: Path, model: SaviorRanker, request: dict[str, Any]) -> float:
    """Max |SavedModel(request) - per-sample Keras model| over the request's candidates."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    feed = {k: tf.constant(np.asarray(v, dtype=DTYPES[k])) for k, v in request["inputs"].items()}
    served = signature(**feed)[OUTPUT].numpy()
    expected = np.asarray(model(per_sample_inputs(request["inputs"]))).reshape(-1)
    return float(np.max(np.abs(served - expected)))


def run_export(cfg: Config, *, variant: str = "full", seed: int = 0) -> dict[str, Any]:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"export needs KERAS_BACKEND=tensorflow (got {keras.backend.backend()!r});"
                           " train under any backend, then export under TensorFlow")
    lake = Lake.from_config(cfg)
    source = lake.ranker(variant, seed).model
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `saviorrec train --variant {variant}`")
    model = keras.saving.load_model(source, compile=False)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    request = sample_request(model, cfg)
    shapes = serving_shapes(model)
    meta = {
        "model_version": f"{variant}-seed{seed}-{digest}",
        "variant": variant,
        "seed": seed,
        "rqvae_version": model.rqvae_version,
        "signature": SIGNATURE,
        "inputs": {n: {"dtype": DTYPES[n], "shape": s} for n, s in shapes.items()},
        "outputs": {OUTPUT: {"dtype": "float32", "shape": [None]}},
        "model_config": model.get_config(),
        "optional_inputs": [BASE_SCORE] if model.use_base_score else [],
    }
    with atomic_path(lake.export_dir) as tmp:
        _write_savedmodel(model, tmp)
        meta["check_max_abs_diff"] = check_savedmodel(tmp, model, request)
        if not meta["check_max_abs_diff"] <= TOLERANCE:
            raise RuntimeError(f"SavedModel scores differ from the Keras model by "
                               f"{meta['check_max_abs_diff']:.3g} > {TOLERANCE}")
        files = ExportFiles(tmp)
        files.meta.write_text(json.dumps(meta, indent=2))
        files.sample_request.write_text(json.dumps(request))
    return meta
