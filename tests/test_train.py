"""Trainer (xpnet/train/trainer.py): batch order, exact resume, NaN guard, label checks, predict."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_np

import xpnet
from xpnet.data import BatchLoader
from xpnet.models import MultiLayerNet, TwoLayerNet
from xpnet.train import LRSchedule, Progress, SaveCheckpoint, Trainer, TrainingDiverged


def _data(n=120, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), (np.arange(n) % classes)


def _setup(seed=0):
    model = MultiLayerNet(6, [8, 8], 3, batchnorm=True, dropout=0.2, seed=seed)
    opt = xpnet.Adam(model, lr=1e-2)
    return model, opt, xpnet.StepLR(opt, 1, 0.5)


def test_first_epoch_uses_the_seeds_first_shuffle(backend):
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    seen = []
    forward = model.forward
    # the training batches (fit first tries one example of the data in evaluation mode)
    model.forward = lambda xb: (model.training and seen.append(to_np(xb)), forward(xb))[1]
    Trainer(model, xpnet.SGD(model, lr=0.0), batch_size=30, seed=5,
            callbacks=[Progress(True)]).fit(x, y, 1)
    first, _ = next(iter(BatchLoader(x, y, 30, rng=xpnet.Generator(5))))
    np.testing.assert_array_equal(seen[0], to_np(first))


def test_resume_is_exact(backend, tmp_path):
    x, y = _data()
    model, opt, sched = _setup()
    straight = Trainer(model, opt, batch_size=32, callbacks=[LRSchedule(sched)])
    straight.fit(x, y, 2, x_test=x, y_test=y)

    ck = tmp_path / "ck.npz"
    m1, o1, s1 = _setup()
    Trainer(m1, o1, batch_size=32, callbacks=[LRSchedule(s1), SaveCheckpoint(ck)]).fit(
        x, y, 1, x_test=x, y_test=y)
    m2, o2, s2 = _setup(seed=99)  # different init: everything must come from the file
    resumed = Trainer(m2, o2, batch_size=32, callbacks=[LRSchedule(s2)])
    resumed.resume(ck)
    assert resumed.epoch == 1
    resumed.fit(x, y, 2, x_test=x, y_test=y)
    assert resumed.history.records[-1]["loss"] == straight.history.records[-1]["loss"]
    assert resumed.history["test_acc"] == straight.history["test_acc"]
    for (k, a), b in zip(model.state_dict().items(), m2.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert o2.lr == opt.lr


@pytest.mark.parametrize("saved_with,resumed_with", [(True, False), (False, True)],
                         ids=["schedule-then-none", "none-then-schedule"])
def test_resume_refuses_a_schedule_change_before_touching_anything(tmp_path, saved_with,
                                                                   resumed_with):
    x, y = _data()
    model, opt, sched = _setup()
    ck = tmp_path / "ck.npz"
    Trainer(model, opt, batch_size=32,
            callbacks=[*([LRSchedule(sched)] if saved_with else []), SaveCheckpoint(ck)]).fit(
        x, y, 1)
    m2, o2, s2 = _setup(seed=99)
    before = {k: v.copy() for k, v in m2.state_dict().items()}
    trainer = Trainer(m2, o2, batch_size=32, callbacks=[LRSchedule(s2)] if resumed_with else [])
    with pytest.raises(ValueError, match="ck.npz: saved with(out)? a learning-rate schedule.*"
                                         "resume with the schedule the run started with"):
        trainer.resume(ck)
    assert trainer.epoch == 0
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_nan_loss_stops_keeps_last_checkpoint_and_saves_the_diverged_state(tmp_path):
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    opt = xpnet.SGD(model, lr=0.01)
    ck = tmp_path / "good.npz"
    trainer = Trainer(model, opt, batch_size=40, log_interval=1, callbacks=[SaveCheckpoint(ck)])
    trainer.fit(x, y, 1)
    before = ck.read_bytes()
    w = xpnet.to_numpy(model.parameters()["0.W"].data).copy()
    w[0, 0] = np.nan  # a poisoned weight: the loss becomes NaN
    model.parameters()["0.W"].data = xpnet.to_device(w)
    with pytest.raises(TrainingDiverged, match=r"nan.*epoch 2.*left untouched.*"
                                               r"good\.diverged\.npz for inspection"):
        trainer.fit(x, y, 2)
    assert ck.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.diverged.npz", "good.npz"]
    saved = xpnet.io.checkpoint.load_checkpoint(tmp_path / "good.diverged.npz")
    assert np.isnan(saved.model["0.W"]).any()  # NaN state saved and verified


def test_nan_inputs_are_named_before_training(tmp_path):
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    trainer = Trainer(model, xpnet.SGD(model, lr=0.01), batch_size=40,
                      callbacks=[SaveCheckpoint(tmp_path / "c")])
    x_bad = x.copy()
    x_bad[5, 0], x_bad[9, 1] = np.nan, np.inf
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"x_train: row 5 holds NaN \(2 of 120 rows"):
        trainer.fit(x_bad, y, 1)
    with pytest.raises(ValueError, match=r"x_test: row 9 holds an infinite value"):
        trainer.fit(x, y, 1, x_test=np.where(np.isnan(x_bad), 0, x_bad), y_test=y)
    assert trainer.epoch == 0 and list(tmp_path.iterdir()) == []
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_finite_divergence_is_caught(tmp_path):
    """lr 1e6: losses of 1e17 and more stay finite; the guard's factor rule stops the run."""
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    ck = tmp_path / "run.npz"
    trainer = Trainer(model, xpnet.SGD(model, lr=1e6), batch_size=10, log_interval=1,
                      callbacks=[SaveCheckpoint(ck)])
    with pytest.raises(TrainingDiverged, match=r"more than 1000 times the first loss.*"
                                               r"run\.diverged\.npz"):
        trainer.fit(x, y, 3)
    assert not ck.exists() and (tmp_path / "run.diverged.npz").is_file()
    calm = TwoLayerNet(6, 4, 3)
    quiet = Trainer(calm, xpnet.SGD(calm, lr=0.05), batch_size=10, log_interval=1)
    quiet.fit(x, y, 3)  # a healthy run is not stopped


def test_bad_labels_are_named():
    x, y = _data()
    trainer = Trainer(TwoLayerNet(6, 4, 3), xpnet.SGD(TwoLayerNet(6, 4, 3), lr=0.1))
    with pytest.raises(ValueError, match=r"y_train: row 2 holds label 7 \(40 of 120.*"
                                         r"expected labels in \[0, 2\]"):
        trainer.fit(x, np.where(y == 2, 7, y), 1)
    with pytest.raises(ValueError, match="120 inputs but 119 labels"):
        trainer.fit(x, y[:-1], 1)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(TwoLayerNet(6, 4, 3), xpnet.SGD(TwoLayerNet(6, 4, 3)), batch_size=0)
    with pytest.raises(ValueError, match=r"evaluate: y: row 2 holds label 7"):
        trainer.evaluate(x, np.where(y == 2, 7, y))
    with pytest.raises(ValueError, match=r"x_train is empty"):
        trainer.fit(x[:0], y[:0], 1)


def test_fit_learns_and_predict_evaluate_agree(backend):
    x, y = _data(n=300)
    y = (x[:, 0] > 0).astype(np.int64)  # a separable problem
    model = TwoLayerNet(6, 16, 2)
    trainer = Trainer(model, xpnet.Adam(model, lr=1e-2), batch_size=50)
    history = trainer.fit(x, y, 5, x_test=x, y_test=y)
    assert history["loss"][-1] < history["loss"][0]
    pred = trainer.predict(x)
    assert isinstance(pred, np.ndarray) and pred.shape == (300,)
    acc = trainer.evaluate(x, y)["acc"]
    assert acc == pytest.approx(np.mean(pred == y)) and acc > 0.9
    assert set(history.last) >= {"epoch", "loss", "train_acc", "test_acc", "lr", "seconds"}


def test_resume_with_an_explicit_new_rate(tmp_path):
    """override={'lr': x} is the one deliberate change on resume: the schedule keeps its
    position and shape around the new base rate; without it a different rate is refused."""
    x, y = _data()
    model, opt, _ = _setup()
    sched = xpnet.CosineLR(opt, 10)
    trainer = Trainer(model, opt, batch_size=40, callbacks=[LRSchedule(sched)])
    trainer.fit(x, y, 2)
    trainer.save(tmp_path / "ck.npz")
    model2, opt2, _ = _setup(seed=1)
    opt2.lr = 0.05
    sched2 = xpnet.CosineLR(opt2, 10)
    resumed = Trainer(model2, opt2, batch_size=40, callbacks=[LRSchedule(sched2)])
    with pytest.raises(ValueError, match="saved with lr=0.01.*override"):
        resumed.resume(tmp_path / "ck.npz")
    assert resumed.epoch == 0 and sched2.epoch == 0  # nothing changed
    resumed.resume(tmp_path / "ck.npz", override={"lr": 0.05})
    assert resumed.epoch == 2 and sched2.epoch == 2 and resumed.lr == 0.05
    assert opt2.lr == pytest.approx(sched2.rate(2)) and sched2.rate(2) == pytest.approx(
        0.05 * 0.5 * (1 + np.cos(np.pi * 2 / 10)))
    resumed.fit(x, y, 3)
    assert resumed.history.records[-1]["lr"] == pytest.approx(sched2.rate(2))


def _snapshot(trainer):
    """Everything a resume may change: arrays, counters, Generators, history, callbacks."""
    opt = trainer.optimizer
    return {
        "model": {k: v.copy() for k, v in trainer.model.state_dict().items()},
        "opt": (opt.t, opt.lr, {n: {k: xpnet.to_numpy(v).copy() for k, v in s.items()}
                                for n, s in opt.state.items()}),
        "sched": trainer.schedule.state_dict(), "run": (trainer.epoch, trainer.step_count),
        "rng": trainer.rng.get_state(), "history": list(trainer.history.records),
        "callbacks": [c.state_dict() for c in trainer.callbacks],
    }


def _assert_same(a, b):
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    assert a["opt"][:2] == b["opt"][:2] and a["opt"][2].keys() == b["opt"][2].keys()
    for n, slots in a["opt"][2].items():
        for k, v in slots.items():
            np.testing.assert_array_equal(v, b["opt"][2][n][k], err_msg=f"{n}/{k}")
    assert {k: v for k, v in a.items() if k not in ("model", "opt")} == \
        {k: v for k, v in b.items() if k not in ("model", "opt")}


@pytest.mark.parametrize("spoil,match", [
    # the metadata schema refuses these as the file is read (CheckpointMetaError)
    (lambda m: m.update(history=3), "meta field 'history' must be"),
    (lambda m: m.update(rng={"state": "garbage"}), "saved rng is not a Generator state"),
    (lambda m: m["callbacks"]["EarlyStopping(loss)"].update(wait=-2), "saved wait"),
    (lambda m: m.update(step=-1), "meta field 'step' must be an int >= 0"),
    (lambda m: m["layer_rngs"].clear(), "saved layer Generators"),
], ids=["history", "rng", "early-stopping", "step", "layer-rngs"])
def test_a_resume_failing_late_changes_nothing(tmp_path, spoil, match):
    """Model, optimizer and schedule pass their checks; a later part of the file does not:
    resume checks every part before loading any, so the trainer is exactly as it was."""
    from xpnet.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from xpnet.train import EarlyStopping

    x, y = _data()
    model, opt, sched = _setup()
    saver = Trainer(model, opt, batch_size=40,
                    callbacks=[LRSchedule(sched), EarlyStopping("loss", patience=5)])
    saver.fit(x, y, 2)
    saver.save(tmp_path / "good.npz")
    ck = load_checkpoint(tmp_path / "good.npz")
    spoil(ck.meta)
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "optimizer",
                                                          "optimizer_params")}
    save_checkpoint(tmp_path / "bad.npz", ck.model, ck.optimizer, meta)

    m2, o2, s2 = _setup(seed=7)
    trainer = Trainer(m2, o2, batch_size=40,
                      callbacks=[LRSchedule(s2), EarlyStopping("loss", patience=5)])
    trainer.fit(x, y, 1)  # a run with state of its own: every part differs from the file's
    before = _snapshot(trainer)
    with pytest.raises(CheckpointError, match=f"bad.npz: .*{match}"):
        trainer.resume(tmp_path / "bad.npz")
    _assert_same(before, _snapshot(trainer))
    trainer.resume(tmp_path / "good.npz")  # the same trainer still resumes a good file
    assert trainer.epoch == 2 and trainer.history.records == saver.history.records
