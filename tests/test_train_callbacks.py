"""The training loop's callbacks: no per-batch hook, and the same results as Keras's own."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from saviorrec.lake import RankerFiles
from tf_ranker import train
from tf_ranker.callbacks import BestWeightsCheckpoint, StepProgbarLogger, StopOnNaN, per_batch_hooks


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(size=512) > 0).astype("float32")
    return x, y


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy",
              metrics=[keras.metrics.AUC(name="auc")])
    return m


def test_the_loops_callbacks_leave_asynchronous_dispatch_on(tmp_path: Path) -> None:
    callbacks = train._callbacks(RankerFiles(tmp_path), patience=2)
    names = [type(c).__name__ for c in callbacks]
    assert {"StopOnNaN", "EarlyStopping", "BestWeightsCheckpoint", "CSVLogger"} <= set(names)
    assert {n: per_batch_hooks(c) for n, c in zip(names, callbacks)} == {n: [] for n in names}
    # The detector sees the hooks Keras's own classes have.
    assert per_batch_hooks(keras.callbacks.TerminateOnNaN()) == ["on_batch_end"]
    assert per_batch_hooks(keras.callbacks.ModelCheckpoint(str(tmp_path / "w.weights.h5"))) == [
        "on_train_batch_end"]
    from keras.src import backend

    if backend.IS_THREAD_SAFE:  # JAX and torch dispatch asynchronously; TensorFlow never does
        assert keras.callbacks.CallbackList(callbacks)._async_train
        assert not keras.callbacks.CallbackList(
            [*callbacks, keras.callbacks.TerminateOnNaN()])._async_train


def test_best_weights_checkpoint_saves_what_keras_checkpoint_saves(tmp_path: Path) -> None:
    x, y = _data()
    saved = {}
    for name, cb in (("ours", BestWeightsCheckpoint(str(tmp_path / "ours.weights.h5"),
                                                    monitor="val_auc", mode="max")),
                     ("keras", keras.callbacks.ModelCheckpoint(
                         str(tmp_path / "keras.weights.h5"), monitor="val_auc", mode="max",
                         save_best_only=True, save_weights_only=True))):
        m = _model()
        h = m.fit(x[:384], y[:384], validation_data=(x[384:], y[384:]), epochs=4,
                  batch_size=64, shuffle=False, verbose=0, callbacks=[cb])
        m.load_weights(str(tmp_path / f"{name}.weights.h5"))
        saved[name] = (h.history["val_auc"], [w.copy() for w in m.get_weights()])
    assert saved["ours"][0] == saved["keras"][0]
    for a, b in zip(saved["ours"][1], saved["keras"][1]):
        np.testing.assert_array_equal(a, b)
    # The file holds the best epoch's weights, not the last epoch's (when they differ).
    assert max(saved["ours"][0]) >= saved["ours"][0][-1]


def test_stop_on_nan_ends_training_after_the_epoch_that_diverged() -> None:
    x, y = _data()
    y[100] = np.nan  # the first epoch's loss is NaN
    m, stop = _model(), StopOnNaN()
    h = m.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=[stop])
    assert stop.collapsed_epoch == 1
    assert len(h.history["loss"]) == 1 and np.isnan(h.history["loss"][0])


def test_stop_on_nan_leaves_a_finite_run_alone() -> None:
    x, y = _data()
    m, stop = _model(), StopOnNaN()
    h = m.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[stop])
    assert stop.collapsed_epoch is None and len(h.history["loss"]) == 3


def test_stop_on_nan_and_terminate_on_nan_give_the_same_history_without_nan() -> None:
    x, y = _data(1)
    histories = []
    for cb in (StopOnNaN(), keras.callbacks.TerminateOnNaN()):
        h = _model(1).fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0,
                          callbacks=[cb])
        histories.append(h.history["loss"])
    assert histories[0] == histories[1]


def test_the_progress_bar_never_counts_past_the_epoch(
        capsys: pytest.CaptureFixture[str]) -> None:
    """70 steps by steps_per_execution 8: Keras's own bar reports step 72 of 70; ours 70."""
    x, y = _data()
    counts, printed = {}, {}
    for name, bar in (("keras", keras.callbacks.ProgbarLogger()), ("ours", StepProgbarLogger())):
        m = _model()
        m.compile(optimizer="sgd", loss="binary_crossentropy", steps_per_execution=8)
        seen = []
        spy = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda b, logs, seen=seen, bar=bar: seen.append(bar.seen))
        m.fit(x[:70 * 7], y[:70 * 7], batch_size=7, epochs=1, verbose=1, callbacks=[bar, spy])
        counts[name] = max(seen)
        # Each bar's own output: Keras's bar prints "72/70" only when its last update falls
        # outside its 0.05 s throttle (timing-dependent), so only ours is checked for text.
        printed[name] = capsys.readouterr().out
    assert counts == {"keras": 72, "ours": 70}
    assert "70/70" in printed["ours"] and "72/70" not in printed["ours"]
