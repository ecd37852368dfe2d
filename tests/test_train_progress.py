"""What a user sees while training: plain progress lines when stderr is not a terminal (driven
here by a fake clock, never by timing), the tqdm bar on a terminal, and History's summary and
table."""

from __future__ import annotations

import io

import numpy as np

import xpnet
from xpnet.models import TwoLayerNet
from xpnet.train import Callback, History, Progress, Trainer, epoch_line


def _data(n=40, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


class FakeClock:
    """Seconds that advance only when told: ``step`` per reading, ``jump`` on demand."""

    def __init__(self, step: float = 0.0):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(progress, *, epochs=1, test=False, extra=(), **kw):
    x, y = _data()
    model = TwoLayerNet(5, 7, 3, seed=1)
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=5, log_interval=2,
                      callbacks=[progress, *extra], **kw)
    return trainer.fit(x, y, epochs, **({"x_test": x, "y_test": y} if test else {}))


def test_a_log_gets_a_plain_line_every_interval(backend):
    log, clock = io.StringIO(), FakeClock(step=10.0)  # every reading: 10 s later
    _fit(Progress(stream=log, clock=clock, interval=30.0), epochs=2)
    lines = log.getvalue().splitlines()
    # one reading at the fit's start (10 s), one at each epoch's start (20 s, 110 s) and one
    # per batch: a line at batches 2, 5 and 8 of each epoch (30 s or more since the last)
    assert [line.split()[:4] for line in lines] == \
        [["epoch", str(e), "batch", f"{b}/8"] for e in (1, 2) for b in (2, 5, 8)], lines
    first = lines[0].split()
    assert first[4] == "loss" and float(first[5]) > 0, lines[0]
    assert first[6:] == ["0.5", "ex/s", "20s"], lines[0]  # 10 examples in 20 s
    assert lines[1].split()[6:] == ["0.5", "ex/s", "50s"], lines[1]
    assert "\r" not in log.getvalue()  # no bar's carriage returns in a log


def test_evaluation_after_a_quiet_spell_gets_a_line(backend):
    log, clock = io.StringIO(), FakeClock()  # time stands still ...

    class LongTraining(Callback):
        priority = 95  # before Progress: the epoch's batches "took" 100 s

        def on_evaluate_start(self, trainer, examples):
            clock.now += 100.0

    _fit(Progress(stream=log, clock=clock), epochs=2, test=True, extra=[LongTraining()])
    assert log.getvalue().splitlines() == ["epoch   1  evaluating on 40 examples",
                                           "epoch   2  evaluating on 40 examples"]


def test_quiet_when_disabled_and_a_bar_on_a_terminal(backend):
    log = io.StringIO()
    _fit(Progress(enabled=False, stream=log, clock=FakeClock(step=100.0)), test=True)
    assert log.getvalue() == ""
    term = Terminal()
    _fit(Progress(stream=term, clock=FakeClock(step=100.0)))
    assert "epoch 1" in term.getvalue() and " batch 3/8" not in term.getvalue()
    forced = io.StringIO()
    _fit(Progress(bar=True, stream=forced, clock=FakeClock(step=100.0)))
    assert "\r" in forced.getvalue()  # the bar, though the stream is not a terminal


def test_verbose_epoch_lines_print_rates_for_people(backend):
    log = io.StringIO()
    history = _fit(Progress(enabled=False, verbose=True, stream=log), epochs=2)
    assert history["lr"] == [0.1, 0.1]  # the mean of 8 equal rates is that rate, exactly
    assert [line.split("  lr ")[1].split()[0] for line in log.getvalue().splitlines()] == \
        ["0.1", "0.1"]
    assert "lr 0.001  " in epoch_line({"epoch": 1, "loss": 0.5, "lr": 0.0010000000000000007,
                                       "seconds": 1.0})


def _long_history() -> History:
    steps = [{"step": i + 1, "epoch": i // 400 + 1, "loss": 1.0 / (i + 1),
              "lr": 0.0010000000000000007} for i in range(1200)]
    records = [{"epoch": e, "loss": 0.5 / e, "train_acc": 0.9 + e / 100,
                "lr": 0.0010000000000000007, "seconds": 12.345, "test_loss": 0.3 + (e == 3),
                "test_acc": 0.95 - (e == 3) / 10} for e in (1, 2, 3)]
    return History(records=records, steps=steps)


def test_printing_a_history_is_a_short_summary():
    history = _long_history()
    text = str(history)
    assert text == repr(history) and "\n" not in text and len(text) < 300, text
    assert text.startswith("History(3 epochs, 1200 steps, 37.0s; last: loss 0.1667, "), text
    assert "lr 0.001," in text and "0.0010000000000000007" not in text
    assert "best: loss 0.1667 (epoch 3), test_loss 0.3 (epoch 1), test_acc 0.95 (epoch 1)" \
        in text
    assert len(history.steps) == 1200 and history["epoch"] == [1, 2, 3]  # data unchanged
    assert str(History()) == "History(0 epochs, 0 steps)"


def test_history_table_has_one_row_per_epoch():
    rows = _long_history().table().splitlines()
    assert rows[0].split() == ["epoch", "loss", "train_acc", "lr", "seconds", "test_loss",
                               "test_acc"]
    assert [r.split() for r in rows[1:]] == [
        ["1", "0.5", "0.91", "0.001", "12.3", "0.3", "0.95"],
        ["2", "0.25", "0.92", "0.001", "12.3", "0.3", "0.95"],
        ["3", "0.1667", "0.93", "0.001", "12.3", "1.3", "0.85"]]
    assert len({len(r) for r in rows}) == 1  # aligned columns
