"""Trainer (xpnet/train/trainer.py): batch order, exact resume, NaN guard, label checks, predict."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_np

import xpnet
from xpnet.data import BatchLoader
from xpnet.models import MultiLayerNet, TwoLayerNet
from xpnet.train import Trainer, TrainingDiverged


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
    model.forward = lambda xb: (seen.append(to_np(xb)), forward(xb))[1]
    Trainer(model, xpnet.SGD(model, lr=0.0), batch_size=30, seed=5, progress=True).fit(x, y, 1)
    first, _ = next(iter(BatchLoader(x, y, 30, rng=xpnet.Generator(5))))
    np.testing.assert_array_equal(seen[0], to_np(first))


def test_resume_is_exact(backend, tmp_path):
    x, y = _data()
    model, opt, sched = _setup()
    straight = Trainer(model, opt, schedule=sched, batch_size=32)
    straight.fit(x, y, 2, x_test=x, y_test=y)

    ck = tmp_path / "ck.npz"
    m1, o1, s1 = _setup()
    Trainer(m1, o1, schedule=s1, batch_size=32, checkpoint=ck).fit(x, y, 1, x_test=x, y_test=y)
    m2, o2, s2 = _setup(seed=99)  # different init: everything must come from the file
    resumed = Trainer(m2, o2, schedule=s2, batch_size=32)
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
    Trainer(model, opt, schedule=sched if saved_with else None, batch_size=32,
            checkpoint=ck).fit(x, y, 1)
    m2, o2, s2 = _setup(seed=99)
    before = {k: v.copy() for k, v in m2.state_dict().items()}
    trainer = Trainer(m2, o2, schedule=s2 if resumed_with else None, batch_size=32)
    with pytest.raises(ValueError, match="ck.npz: saved with(out)? a learning-rate schedule.*"
                                         "resume with the schedule the run started with"):
        trainer.resume(ck)
    assert trainer.epoch == 0
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    opt = xpnet.SGD(model, lr=0.01)
    ck = tmp_path / "good.npz"
    trainer = Trainer(model, opt, batch_size=40, checkpoint=ck, log_interval=1)
    trainer.fit(x, y, 1)
    before = ck.read_bytes()
    x_bad = x.copy()
    x_bad[5, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="nan.*epoch 2.*left untouched"):
        trainer.fit(x_bad, y, 2)
    assert ck.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "good.npz"]


def test_bad_labels_are_named():
    x, y = _data()
    trainer = Trainer(TwoLayerNet(6, 4, 3), xpnet.SGD(TwoLayerNet(6, 4, 3), lr=0.1))
    with pytest.raises(ValueError, match=r"training data labels.*\[0, 2\].*from 0 to 7"):
        trainer.fit(x, np.where(y == 2, 7, y), 1)
    with pytest.raises(ValueError, match="120 inputs but 119 labels"):
        trainer.fit(x, y[:-1], 1)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(TwoLayerNet(6, 4, 3), xpnet.SGD(TwoLayerNet(6, 4, 3)), batch_size=0)


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
