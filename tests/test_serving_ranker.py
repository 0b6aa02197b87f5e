"""The served SavedModel under XLA: candidate buckets, and the same scores as the plain graph."""

from __future__ import annotations

import numpy as np
from test_serving_fixture import Served, served_fixture  # noqa: F401 (fixtures)

from serving.ranker import Ranker, candidate_buckets
from serving.service import RankingService, model_dir
from serving.tensors import build_inputs


def test_candidate_buckets_are_powers_of_two_up_to_the_limit() -> None:
    assert candidate_buckets(1) == [8]
    assert candidate_buckets(8) == [8]
    assert candidate_buckets(9) == [8, 16]
    assert candidate_buckets(1000) == [8, 16, 32, 64, 128, 256, 512, 1024]


def test_xla_scores_equal_the_graph_scores_for_every_padding(served: Served) -> None:
    graph = Ranker(model_dir(served.cfg), xla=False)
    xla = Ranker(model_dir(served.cfg), xla=True, max_candidates=20)
    assert xla.buckets == [8, 16, 32] and graph.buckets == []
    assert [xla.bucket(n) for n in (1, 8, 9, 20)] == [8, 8, 16, 32]
    assert graph.bucket(9) == 9
    service = RankingService.start(served.cfg.with_overrides(serving={"xla": False}))
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 20):
        items = rng.choice(np.arange(1, 41), n, replace=False).tolist()
        features = service.reader.read(2, items)
        inputs = build_inputs(2, items, features.sequence.item_ids, features.items,
                              service.layout, features.sequence.stats)
        expected = graph.predict(inputs)
        got = xla.predict(inputs)
        assert got.shape == (n,)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert np.ptp(expected) > 1e-3 or n == 1  # the candidates differ: the check has teeth


def test_tf_threads_are_set_before_the_model_loads(served: Served) -> None:
    """serving.tf_threads reaches TensorFlow in a fresh process (as `saviorrec serve` starts),
    and a process where TensorFlow already runs keeps its threads with a warning."""
    import subprocess
    import sys

    child = (
        "import sys, logging, tensorflow as tf\n"
        "from serving.ranker import Ranker\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "if sys.argv[2] == 'late': tf.constant(1.0) + 1.0\n"
        "r = Ranker(sys.argv[1], threads=1)\n"
        "print('THREADS', tf.config.threading.get_intra_op_parallelism_threads(),\n"
        "      tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    out = {}
    for when in ("fresh", "late"):
        proc = subprocess.run([sys.executable, "-c", child, str(model_dir(served.cfg)), when],
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[when] = (proc.stdout.split("THREADS", 1)[1].split(), proc.stderr)
    assert out["fresh"][0] == ["1", "1"]
    assert out["late"][0] == ["0", "0"]  # TensorFlow's default kept
    assert "tf_threads=1 ignored" in out["late"][1]
