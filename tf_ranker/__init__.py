"""Keras 3 ranker of SaviorRec: layers, models, training, evaluation and SavedModel export.

Submodules import lazily: ``tf_ranker.synthetic_inputs`` needs numpy only, training needs keras
(any backend), export needs TensorFlow.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "synthetic_inputs":
        from tf_ranker.synthetic import synthetic_inputs

        return synthetic_inputs
    raise AttributeError(f"module 'tf_ranker' has no attribute {name!r}")
