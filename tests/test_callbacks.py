"""Callbacks (xpnet/train/callbacks.py): the events and their order, priorities, state for
resume, and the built-in callbacks' checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import class_data

import xpnet
from xpnet.models import TwoLayerNet
from xpnet.module import StateDictError
from xpnet.train import (
    Callback,
    DivergenceGuard,
    EarlyStopping,
    KeepBest,
    LRSchedule,
    Progress,
    SaveCheckpoint,
    Trainer,
    train_step,
)


class Recorder(Callback):
    """Logs every event it sees into a shared list."""

    def __init__(self, log, name="rec", priority=0):
        self.log, self.name, self.priority = log, name, priority

    def on_fit_start(self, trainer):
        self.log.append((self.name, "fit_start"))

    def on_epoch_start(self, trainer, epoch):
        self.log.append((self.name, "epoch_start", epoch))

    def on_batch_end(self, trainer, batch, out, loss):
        self.log.append((self.name, "batch_end", batch, loss is not None))

    def on_step_end(self, trainer, step):
        self.log.append((self.name, "step_end", step))

    def on_epoch_end(self, trainer, record):
        self.log.append((self.name, "epoch_end", record["epoch"], trainer.epoch,
                         len(trainer.history)))

    def on_fit_end(self, trainer):
        self.log.append((self.name, "fit_end"))


def test_events_fire_in_the_documented_order():
    x, y = class_data(n=60)
    model = TwoLayerNet(5, 4, 3)
    log = []
    Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=20, accumulate=2, log_interval=2,
            callbacks=[Recorder(log)]).fit(x, y, 2)
    per_epoch = [
        ("batch_end", 1, False), ("batch_end", 2, True), ("step_end",),
        ("batch_end", 3, False), ("step_end",),  # the epoch's last group holds one batch
    ]
    expected = [("rec", "fit_start")]
    step = 0
    for epoch in (1, 2):
        expected.append(("rec", "epoch_start", epoch))
        for event in per_epoch:
            if event[0] == "step_end":
                step += 1
                expected.append(("rec", "step_end", step))
            else:
                expected.append(("rec", *event))
        expected.append(("rec", "epoch_end", epoch, epoch, epoch))  # counted, recorded
    expected.append(("rec", "fit_end"))
    assert log == expected


def test_priorities_order_every_event_and_ties_keep_the_given_order():
    x, y = class_data(n=20)
    model = TwoLayerNet(5, 4, 3)
    log = []
    cbs = [Recorder(log, "low", -5), Recorder(log, "a"), Recorder(log, "high", 7),
           Recorder(log, "b")]
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=20, callbacks=cbs)
    trainer.fit(x, y, 1)
    assert [n for n, *event in log if event == ["fit_start"]] == ["high", "a", "b", "low"]
    assert [n for n, *event in log if event[0] == "epoch_end"] == ["high", "a", "b", "low"]
    # the built-in order: guard, progress, schedule, early stopping, yours, keep-best, checkpoint
    sched = LRSchedule(xpnet.StepLR(trainer.optimizer, 1))
    ck, best, stop = SaveCheckpoint("ck.npz"), KeepBest("best.npz"), EarlyStopping()
    mine = Callback()
    t = Trainer(model, trainer.optimizer, callbacks=[ck, best, mine, stop, sched])
    kinds = [type(c) for c in t.callbacks]
    assert kinds == [DivergenceGuard, Progress, LRSchedule, EarlyStopping, Callback, KeepBest,
                     SaveCheckpoint]


def test_defaults_are_added_unless_given():
    model = TwoLayerNet(5, 4, 3)
    plain = Trainer(model, xpnet.SGD(model))
    assert [type(c) for c in plain.callbacks] == [DivergenceGuard, Progress]
    guard = DivergenceGuard(factor=None)
    custom = Trainer(model, xpnet.SGD(model), callbacks=[guard, Progress(False)])
    assert custom.callbacks[0] is guard and len(custom.callbacks) == 2


def test_a_callback_stops_training():
    x, y = class_data(n=20)
    model = TwoLayerNet(5, 4, 3)

    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, record):
            trainer.stopped_early = record["epoch"] >= 2

    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=10,
                      callbacks=[StopAfterTwo()])
    trainer.fit(x, y, 10)
    assert trainer.epoch == 2 and trainer.stopped_early


def test_callbacks_of_the_wrong_kind_or_sharing_a_key_are_refused():
    model = TwoLayerNet(5, 4, 3)
    opt = xpnet.SGD(model)
    with pytest.raises(TypeError, match="Trainer: callbacks must be a list of "
                                        "xpnet.train.Callback objects, got 'progress'"):
        Trainer(model, opt, callbacks=["progress"])
    with pytest.raises(ValueError, match=r"two callbacks save their state as \['schedule'\]"):
        Trainer(model, opt, callbacks=[LRSchedule(xpnet.StepLR(opt, 1)),
                                       LRSchedule(xpnet.StepLR(opt, 2))])
    with pytest.raises(ValueError, match=r"\['KeepBest\(test_loss\)'\]"):
        Trainer(model, opt, callbacks=[KeepBest("a.npz"), KeepBest("b.npz")])
    Trainer(model, opt, callbacks=[KeepBest("a.npz"), KeepBest("b.npz", "test_acc")])
    with pytest.raises(TypeError, match="LRSchedule: schedule must be an xpnet Schedule"):
        LRSchedule(opt)
    with pytest.raises(TypeError, match="SaveCheckpoint: path must be a file path"):
        SaveCheckpoint(None)
    with pytest.raises(ValueError, match="EarlyStopping: min_delta must be a finite number "
                                         ">= 0, got -1"):
        EarlyStopping(min_delta=-1)


@pytest.mark.parametrize("make,state,match", [
    (lambda: EarlyStopping(), {"best": 1.0, "best_epoch": 2}, r"lacks \['wait'\]"),
    (lambda: EarlyStopping(), {"best": 1.0, "best_epoch": 2, "wait": -1},
     "saved wait must be a non-negative integer"),
    (lambda: KeepBest("b.npz"), {"best": "low", "best_epoch": 2}, "saved best must be a number"),
    (lambda: KeepBest("b.npz"), [1.0, 2], "must be a dict, got list"),
], ids=["missing-key", "negative-wait", "best-a-string", "not-a-dict"])
def test_callback_states_are_checked_before_loading(make, state, match):
    cb = make()
    before = dict(vars(cb))
    with pytest.raises(ValueError, match=match):
        cb.load_state_dict(state)
    assert vars(cb) == before


def test_the_state_round_trips():
    stop = EarlyStopping(patience=5)
    stop.best, stop.best_epoch, stop.wait = 0.25, 3, 2
    again = EarlyStopping(patience=5)
    again.load_state_dict(stop.state_dict())
    assert (again.best, again.best_epoch, again.wait) == (0.25, 3, 2)
    assert issubclass(StateDictError, ValueError) and not issubclass(StateDictError, KeyError)


def test_train_step_grad_scale_scales_the_gradient_not_the_loss(backend):
    x, y = class_data(n=10)
    a, b = TwoLayerNet(5, 4, 3, seed=1), TwoLayerNet(5, 4, 3, seed=1)
    loss = xpnet.SoftmaxCrossEntropy()
    xb, yb = xpnet.to_device(x), xpnet.to_device(y)
    out_a = train_step(a, loss, None, xb, yb)
    out_b = train_step(b, loss, None, xb, yb, grad_scale=0.25)
    assert float(out_a.loss) == float(out_b.loss)
    for (k, pa), pb in zip(a.parameters().items(), b.parameters().values()):
        np.testing.assert_allclose(xpnet.to_numpy(pb.grad), 0.25 * xpnet.to_numpy(pa.grad),
                                   rtol=1e-6, atol=1e-8, err_msg=k)
