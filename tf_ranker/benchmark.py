"""Training throughput of SaviorRanker on synthetic batches of the paper's sizes.

``KERAS_BACKEND=jax python -m tf_ranker.benchmark --variant full --batches 20 --epochs 3``
prints one JSON line: samples/s of the epochs after the first (which includes compilation).
Defaults: d=64, L=8 levels of K=2048 codes, sequences of 50, batch 1024 (paper 4.1.4).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import keras
import numpy as np

from tf_ranker.models import SaviorRanker
from tf_ranker.synthetic import synthetic_inputs


def benchmark(*, variant: str = "full", batch_size: int = 1024, batches: int = 20, epochs: int = 3,
              seq_len: int = 50, embedding_dim: int = 64, levels: int = 8,
              codebook_size: int = 2048, num_users: int = 10_000, num_items: int = 100_000,
              steps_per_execution: int = 1, seed: int = 0) -> dict[str, Any]:
    keras.utils.set_random_seed(seed)
    x, y = synthetic_inputs(batch_size=batch_size * batches, seq_len=seq_len,
                            embedding_dim=embedding_dim, levels=levels,
                            codebook_size=codebook_size, num_users=num_users,
                            num_items=num_items, seed=seed)
    model = SaviorRanker(variant=variant, num_users=num_users, num_items=num_items,
                         num_pv_buckets=5, embedding_dim=embedding_dim, levels=levels,
                         codebook_size=codebook_size)
    model.compile(optimizer=keras.optimizers.Adagrad(0.01), loss="binary_crossentropy",
                  steps_per_execution=steps_per_execution)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        seconds.append(time.perf_counter() - start)
    steady = float(np.median(seconds[1:])) if epochs > 1 else seconds[0]
    return {
        "backend": keras.backend.backend(), "variant": variant, "batch_size": batch_size,
        "steps_per_epoch": batches, "steps_per_execution": steps_per_execution,
        "params": int(model.count_params()), "first_epoch_s": round(seconds[0], 3),
        "steady_epoch_s": round(steady, 4), "samples_per_s": round(batch_size * batches / steady),
        "final_loss": float(history.history["loss"][-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="full")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--codebook-size", type=int, default=2048)
    args = parser.parse_args()
    print(json.dumps(benchmark(variant=args.variant, batch_size=args.batch_size,
                               batches=args.batches, epochs=args.epochs,
                               steps_per_execution=args.steps_per_execution, levels=args.levels,
                               codebook_size=args.codebook_size)))


if __name__ == "__main__":
    main()
