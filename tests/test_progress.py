"""Progress bars do not flood logs: with stderr (tqdm) or stdout (Keras) not a terminal, at most
one line per epoch or per 30 s; on a terminal they stay live."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
import tqdm.std
from test_ranker_fixtures import training_world

from saviorrec.progress import LOG_INTERVAL_S, fit_verbose, progress


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def draws(text: str) -> list[str]:
    """Each redraw of a bar: tqdm separates them with \\r, ends the bar's line with \\n."""
    return [d for d in re.split(r"[\r\n]", text) if d.strip()]


def run_bar(monkeypatch: pytest.MonkeyPatch, *, tty: bool, seconds: float, steps: int) -> str:
    """A bar of ``steps`` steps over ``seconds`` of a fake clock, written to a fake stderr."""
    stderr, clock = Stream(tty), [1000.0]
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    for _ in progress(range(steps), desc="epoch 1/1"):
        clock[0] += seconds / steps
    return stderr.getvalue()


def test_a_bar_in_a_log_draws_at_most_every_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    text = run_bar(monkeypatch, tty=False, seconds=100.0, steps=10_000)
    # the first draw, one at most every 30 s of the 100, the last; all on one line
    assert 2 <= len(draws(text)) <= 2 + int(100 // LOG_INTERVAL_S)
    assert text.count("\n") == 1 and "10000/10000" in draws(text)[-1]


def test_a_bar_on_a_terminal_stays_live(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(draws(run_bar(monkeypatch, tty=True, seconds=100.0, steps=10_000))) > 100


def test_keras_fit_is_one_line_per_epoch_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", Stream(tty=False))
    assert fit_verbose() == 2
    monkeypatch.setattr(sys, "stdout", Stream(tty=True))
    assert fit_verbose() == 1


def test_ranker_training_logs_one_line_per_epoch(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tf_ranker.train import run_train

    cfg = training_world(tmp_path, epochs=2, batch_size=8, heads=2, attention_dim=8, mba_dim=8,
                         id_dim=4, stat_dim=4, dnn_units=[8], early_stopping_patience=5)
    capsys.readouterr()
    run_train(cfg, variant="base", seed=0)  # 20 steps per epoch
    lines = [s for s in capsys.readouterr().out.splitlines() if "step" in s]
    assert len(lines) == 2, lines  # Keras's live bar would print a line per 0.05 s
