"""Interrupted runs, resume settings and numbers: a KeyboardInterrupt in ``fit`` rolls the
unfinished epoch back, a refused ``fit`` changes nothing, a resume must match every setting
that changes the result, and non-finite weights are refused unless asked for."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import class_data

import xpnet
from xpnet.distributed import SingleProcess
from xpnet.io.checkpoint import ResumeMismatchError
from xpnet.module import StateDictError
from xpnet.train import (
    Callback,
    EarlyStopping,
    KeepBest,
    LRSchedule,
    SaveCheckpoint,
    Trainer,
    TrainingDiverged,
)


def _net(seed=0):
    """float64, with Dropout: its Generator is part of what an interrupt must roll back."""
    model = xpnet.Sequential(xpnet.Linear(5, 8, dtype="float64"), xpnet.ReLU(),
                             xpnet.Dropout(0.3, rng=xpnet.Generator(7)),
                             xpnet.Linear(8, 3, dtype="float64"))
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: rng.standard_normal(v.shape) * 0.5
                           for k, v in model.state_dict().items()})
    model.num_classes = 3
    model.to_device()
    return model


def _trainer(model, *callbacks, accumulate=2, **kw):
    opt = xpnet.Adam(model, lr=1e-2)
    return Trainer(model, opt, batch_size=8, accumulate=accumulate, log_interval=1,
                   callbacks=[LRSchedule(xpnet.CosineLR(opt, 40, per_step=True)),
                              EarlyStopping("loss", patience=5), *callbacks], **kw)


class Interrupt(Callback):
    """Raises KeyboardInterrupt once, after batch ``batch`` of epoch ``epoch`` (or at the end
    of that epoch with ``batch=None``), as Ctrl-C in a notebook would."""

    def __init__(self, epoch, batch):
        self.at, self.batch, self.fired, self.epoch = epoch, batch, False, 0

    def on_epoch_start(self, trainer, epoch):
        self.epoch = epoch

    def on_batch_end(self, trainer, batch, out, loss):
        if not self.fired and self.epoch == self.at and batch == self.batch:
            self.fired = True
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, record):
        if not self.fired and self.epoch == self.at and self.batch is None:
            self.fired = True
            raise KeyboardInterrupt


def _params(model):
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


def _steps(history):
    return np.array([(r["step"], r["epoch"], r["loss"], r["lr"]) for r in history.steps])


def _records(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


@pytest.mark.parametrize("batch", [1, 4, None])
def test_an_interrupted_fit_continues_exactly_as_an_uninterrupted_one(backend, batch):
    """Semantics: the interrupted epoch is rolled back to its start (weights, optimizer slots,
    schedule, callbacks, counters, Generators, history); fit again repeats it."""
    x, y = class_data(60, dtype=np.float64)
    ref = _trainer(_net())
    ref.fit(x, y, 3, x_test=x, y_test=y)

    stop = Interrupt(2, batch)
    tr = _trainer(_net(), stop)
    tr.fit(x, y, 1, x_test=x, y_test=y)
    after_one = (_params(tr.model), tr.step_count, tr.optimizer.lr, tr.rng.get_state())
    with pytest.raises(KeyboardInterrupt):
        tr.fit(x, y, 3, x_test=x, y_test=y)
    assert stop.fired
    params, step, lr, rng = after_one
    assert tr.epoch == 1 and len(tr.history) == 1 and tr.step_count == step
    assert len(tr.history.steps) == step and tr.optimizer.lr == lr and tr.rng.get_state() == rng
    for k, v in _params(tr.model).items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    tr.fit(x, y, 3, x_test=x, y_test=y)  # continue
    assert tr.epoch == 3 and tr.step_count == ref.step_count
    for k, v in _params(tr.model).items():
        np.testing.assert_allclose(v, _params(ref.model)[k], rtol=1e-12, atol=1e-14,
                                   err_msg=k)
    np.testing.assert_allclose(_steps(tr.history), _steps(ref.history), rtol=1e-12)
    assert len(tr.history) == len(ref.history)
    for got, want in zip(_records(tr.history), _records(ref.history)):
        assert got == pytest.approx(want, rel=1e-12)


def _unchanged(trainer):
    return (_params(trainer.model), trainer.rng.get_state(), trainer.epoch, trainer.step_count,
            trainer.model[2].rng.get_state())


def _assert_same(a, b):
    assert a[1:] == b[1:]
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])


@pytest.mark.parametrize("x_test, y_test, match", [
    (np.zeros((4, 7)), np.zeros(4, int), r"x_test/y_test do not fit.*\(1, 7\)"),
    (np.zeros((4, 5)), np.zeros((4, 2, 2)), r"x_test/y_test do not fit"),
])
def test_a_refused_fit_changes_nothing(backend, x_test, y_test, match):
    x, y = class_data(60, dtype=np.float64)
    tr = _trainer(_net())
    before = _unchanged(tr)
    with pytest.raises(ValueError, match=match):
        tr.fit(x, y, 2, x_test=x_test, y_test=y_test)
    _assert_same(_unchanged(tr), before)
    assert len(tr.history) == 0


def test_fit_names_the_argument_that_is_not_an_array():
    x, y = class_data(60, dtype=np.float64)
    tr = _trainer(_net())
    with pytest.raises(TypeError, match=r"fit: y_train must be an array.*got 5"):
        tr.fit(x, 5, 1)
    with pytest.raises(ValueError, match="x_test was given without y_test"):
        tr.fit(x, y, 1, x_test=x)
    with pytest.raises(ValueError, match="y_test was given without x_test"):
        tr.fit(x, y, 1, y_test=y)
    assert tr.epoch == 0


# ---------------------------------------------------------------- resume settings
def test_resume_refuses_another_accumulate_naming_both(tmp_path):
    x, y = class_data(60, dtype=np.float64)
    tr = _trainer(_net(), SaveCheckpoint(tmp_path / "ck.npz"), accumulate=2)
    tr.fit(x, y, 1)
    other = _trainer(_net(1), accumulate=3)
    before = _unchanged(other)
    with pytest.raises(ResumeMismatchError, match=r"accumulate=2.*accumulate=3"):
        other.resume(tmp_path / "ck.npz")
    _assert_same(_unchanged(other), before)


def test_resume_refuses_another_training_set_size_naming_both(tmp_path):
    x, y = class_data(60, dtype=np.float64)
    tr = _trainer(_net(), SaveCheckpoint(tmp_path / "ck.npz"))
    tr.fit(x, y, 1)
    again = _trainer(_net(1))
    again.resume(tmp_path / "ck.npz")
    before = _unchanged(again)
    with pytest.raises(ValueError, match=r"59 examples.*ck\.npz was trained on 60"):
        again.fit(x[:59], y[:59], 2)
    _assert_same(_unchanged(again), before)
    again.fit(x, y, 2)  # the saved size goes on
    assert again.epoch == 2


def test_a_resumed_early_stopped_run_stops_where_it_stopped(tmp_path):
    x, y = class_data(60, dtype=np.float64)

    def make(*callbacks):
        model = _net()
        return Trainer(model, xpnet.SGD(model, lr=1e-3), batch_size=8, callbacks=[
            EarlyStopping("loss", patience=2, min_delta=1e9), *callbacks])

    tr = make(SaveCheckpoint(tmp_path / "ck.npz"))
    tr.fit(x, y, 10)
    assert tr.stopped_early and tr.epoch == 3  # epoch 1 improves on inf, 2 and 3 do not
    again = make()
    again.resume(tmp_path / "ck.npz")
    again.fit(x, y, 10)
    assert again.stopped_early and again.epoch == 3 and len(again.history) == 3


def test_keep_best_and_checkpoint_naming_one_file_are_refused(tmp_path):
    model = _net()
    opt = xpnet.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match=r"SaveCheckpoint and KeepBest both write .*run\.npz"):
        Trainer(model, opt, callbacks=[SaveCheckpoint(tmp_path / "run.npz"),
                                       KeepBest(tmp_path / "sub" / ".." / "run.npz", "loss")])
    Trainer(model, opt, callbacks=[SaveCheckpoint(tmp_path / "run.npz"),
                                   KeepBest(tmp_path / "best.npz", "loss")])


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_weights_are_refused_unless_allowed(backend, bad):
    model = _net()
    state = model.state_dict()
    state["3.b"] = state["3.b"].copy()
    state["3.b"][1] = bad
    before = _params(model)
    with pytest.raises(StateDictError, match=r"'3\.b' holds 1 NaN or infinite.*allow_nonfinite"):
        model.load_state_dict(state)
    for k, v in _params(model).items():
        np.testing.assert_array_equal(v, before[k])
    model.load_state_dict(state, allow_nonfinite=True)
    assert not np.isfinite(_params(model)["3.b"]).all()


def test_resume_refuses_a_diverged_checkpoint_unless_allowed(tmp_path):
    x, y = class_data(60, dtype=np.float64)
    tr = _trainer(_net())
    tr.fit(x, y, 1)
    tr.model[3].b.data = tr.model[3].b.data * np.nan
    tr.save(tmp_path / "nan.npz")
    other = _trainer(_net(1))
    before = _unchanged(other)
    with pytest.raises(ResumeMismatchError, match=r"nan\.npz.*'3\.b'.*allow_nonfinite=True"):
        other.resume(tmp_path / "nan.npz")
    _assert_same(_unchanged(other), before)
    other.resume(tmp_path / "nan.npz", allow_nonfinite=True)
    assert other.epoch == 1


def test_a_resume_that_diverges_at_once_names_the_checkpoint(tmp_path):
    x, y = class_data(60, dtype=np.float64)
    tr = _trainer(_net())
    tr.fit(x, y, 1)
    # finite, but wrong: a negative second moment gives NaN weights at the first step
    v = tr.optimizer.state["0.W"]["v"]
    tr.optimizer.state["0.W"]["v"] = v * 0.0 - 1.0
    tr.save(tmp_path / "huge.npz")
    again = _trainer(_net(1))
    again.resume(tmp_path / "huge.npz")
    with pytest.raises(TrainingDiverged, match=r"after resuming from .*huge\.npz"):
        again.fit(x, y, 3)


def test_a_fresh_run_that_diverges_blames_the_learning_rate():
    x, y = class_data(60, dtype=np.float64)
    model = _net()
    model[0].W.data = model[0].W.data * 1e200
    tr = Trainer(model, xpnet.SGD(model, lr=1.0), batch_size=8, log_interval=1)
    with pytest.raises(TrainingDiverged, match="smaller learning rate") as info:
        tr.fit(x, y, 3)
    assert "resuming" not in str(info.value)


# ---------------------------------------------------------------- communicators
class Recording(SingleProcess):
    """One process that counts the reductions asked of it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def allreduce_(self, buf):
        self.calls += 1
        return super().allreduce_(buf)

    def allreduce_host(self, values):
        self.calls += 1
        return super().allreduce_host(values)


def test_sync_batchnorm_reduces_over_the_trainers_communicator():
    x, y = class_data(60, dtype=np.float64)
    model = xpnet.Sequential(xpnet.Linear(5, 4, dtype="float64"),
                             xpnet.BatchNorm(4, sync=True, dtype="float64"), xpnet.ReLU(),
                             xpnet.Linear(4, 3, dtype="float64"))
    comm = Recording()
    tr = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=10, comm=comm)
    assert model[1].comm is comm
    tr.fit(x, y, 1)
    assert comm.calls >= 3 * 6  # count, mean and variance per batch at least
