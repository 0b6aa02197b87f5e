"""The training loop's callbacks, acting at epoch ends only.

Keras dispatches batches asynchronously (the host queues the next steps while the device runs)
only when no callback implements a per-batch hook: one such hook makes the host wait for the
device after every ``steps_per_execution`` steps (issue 24; benchmarks/train_speed.py lists each
callback's hooks in its results). Keras's ``TerminateOnNaN`` checks every batch and
``ModelCheckpoint`` implements ``on_train_batch_end`` even when it saves per epoch, so the loop
uses the two classes below instead. On runs without a NaN the trained weights, the history and
the saved checkpoint are the same as with Keras's classes.
"""

from __future__ import annotations

import math
from typing import Any

import keras


class StopOnNaN(keras.callbacks.Callback):
    """Stops training after an epoch whose training loss is NaN or infinite.

    Keras's TerminateOnNaN stops inside the epoch; here the rest of that epoch runs on (its
    weights are NaN either way) and no further epoch starts. ``collapsed_epoch`` is the
    1-based epoch, or None; ``train.check_not_collapsed`` reads the history and reports it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.collapsed_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.collapsed_epoch = epoch + 1
            print(f"Epoch {epoch + 1}: invalid loss {loss}, terminating training")
            self.model.stop_training = True


class BestWeightsCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras's ModelCheckpoint saving the best weights at epoch ends, with no per-batch hook.

    With ``save_freq="epoch"`` (the only frequency accepted) ModelCheckpoint's own
    ``on_train_batch_end`` does nothing but its presence turns off asynchronous dispatch; the
    base class's default (marked as the default, so Keras sees no hook) replaces it.
    """

    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end

    def __init__(self, filepath: str, *, monitor: str, mode: str) -> None:
        super().__init__(filepath, monitor=monitor, mode=mode, save_best_only=True,
                         save_weights_only=True, save_freq="epoch")


class StepProgbarLogger(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, its step count held at the epoch's steps.

    With steps_per_execution > 1 Keras reports the last step of each execution, which passes
    the epoch's end when steps_per_execution does not divide its steps: 70 steps by 8 showed
    "72/70". Keras adds its own bar after it decides on asynchronous dispatch, so that bar never
    turns dispatch off; ``async_safe`` (Keras's own opt-out) keeps this one the same.
    """

    async_safe = True

    def _held(self, batch: int) -> int:
        return batch if self.target is None else min(batch, self.target - 1)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_end(self._held(batch), logs)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_test_batch_end(self._held(batch), logs)

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_predict_batch_end(self._held(batch), logs)


ASYNC_BREAKING_HOOKS = ("on_batch_end", "on_train_batch_end", "on_test_batch_end",
                        "on_predict_batch_end")
"""The hooks Keras's CallbackList checks: any one implemented turns off asynchronous dispatch
(of training for the first two, of evaluation or prediction for the others)."""


def per_batch_hooks(callback: keras.callbacks.Callback) -> list[str]:
    """The hooks of ASYNC_BREAKING_HOOKS that a callback implements."""
    from keras.src import utils

    if getattr(callback, "async_safe", False):  # Keras's own opt-out
        return []
    return [n for n in ASYNC_BREAKING_HOOKS if not utils.is_default(getattr(callback, n))]


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard writing epoch summaries only (no per-batch scalars, graph or trace).

    Its per-batch hooks write batch scalars and the graph; turned back to the defaults they
    leave the epoch summaries (``update_freq="epoch"``), which are what the run's logs keep.
    """

    on_train_batch_begin = keras.callbacks.Callback.on_train_batch_begin
    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir, update_freq="epoch", write_graph=False, profile_batch=0)
