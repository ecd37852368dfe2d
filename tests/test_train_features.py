"""Trainer features: regression targets, drop_last, gradient accumulation, early stopping and
keep-best checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet
from xpnet.io.checkpoint import load_checkpoint
from xpnet.models import MultiLayerNet, TwoLayerNet
from xpnet.train import EarlyStopping, KeepBest, LRSchedule, SaveCheckpoint, Trainer


def _data(n=120, d=6, classes=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), (np.arange(n) % classes)


def test_regression_with_mse_on_real_targets(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    t = np.stack([x[:, 0] - x[:, 1], 0.5 * x[:, 2]], axis=1).astype(np.float32)
    model = TwoLayerNet(4, 16, 2, seed=0)
    trainer = Trainer(model, xpnet.Adam(model, lr=1e-2), xpnet.MSE(), batch_size=32)
    history = trainer.fit(x, t, 8, x_test=x, y_test=t)
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    assert set(history.last) == {"epoch", "loss", "lr", "seconds", "test_loss"}  # no accuracy
    pred = trainer.predict(x)
    assert pred.shape == (200, 2) and pred.dtype == np.float32
    assert trainer.evaluate(x, t)["loss"] == pytest.approx(np.mean((pred - t) ** 2), rel=1e-5)


def test_regression_batches_follow_the_label_batch_order(backend):
    """Real targets are gathered by index on the device, in the very order labels would be."""
    x, y = _data(n=50)
    seen = {}
    for name, target in (("labels", y), ("onehot", np.eye(3, dtype=np.float32)[y])):
        model = TwoLayerNet(6, 4, 3, seed=0)
        got = seen[name] = []
        forward = model.forward
        model.forward = lambda xb, got=got, forward=forward: (
            got.append(xpnet.to_numpy(xb)), forward(xb))[1]
        loss = xpnet.SoftmaxCrossEntropy() if name == "labels" else xpnet.MSE()
        Trainer(model, xpnet.SGD(model, lr=0.1), loss, batch_size=16, seed=3).fit(x, target, 1)
    for a, b in zip(seen["labels"], seen["onehot"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_drop_last_and_batchnorm_last_batch_of_one(backend):
    x, y = _data(n=101)
    model = MultiLayerNet(6, [8], 3, batchnorm=True, seed=0)
    before = model.state_dict()
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=50)
    with pytest.raises(ValueError, match="101 examples in batches of 50 leave a last batch "
                                         "of one.*drop_last=True"):
        trainer.fit(x, y, 1)
    for k, v in model.state_dict().items():  # refused before anything changed
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert trainer.epoch == 0 and trainer.step_count == 0
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=50, drop_last=True)
    trainer.fit(x, y, 2)
    assert trainer.step_count == 4 and len(trainer.history.steps) == 4
    with pytest.raises(ValueError, match="10 examples with drop_last=True and batch_size 50"):
        trainer.fit(x[:10], y[:10], 3)


@pytest.mark.parametrize("opt", ["sgd_momentum_decay", "adam"])
@pytest.mark.parametrize("n", [300, 250], ids=["even", "ragged"])
def test_accumulating_two_batches_of_50_equals_one_batch_of_100(backend, opt, n):
    x, y = _data(n=n, dtype=np.float64)

    def run(batch_size, accumulate):
        model = TwoLayerNet(6, 8, 3, seed=4, dtype="float64")
        o = xpnet.Momentum(model, lr=0.1, weight_decay=1e-2) if opt != "adam" \
            else xpnet.Adam(model, lr=1e-2)
        sched = xpnet.CosineLR(o, 8, per_step=True)
        t = Trainer(model, o, batch_size=batch_size, accumulate=accumulate, seed=2,
                    callbacks=[LRSchedule(sched)])
        t.fit(x, y, 2)
        return model, t

    big, tb = run(100, 1)
    small, ts = run(50, 2)
    for (k, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12, err_msg=k)
    assert ts.step_count == tb.step_count == 2 * -(-n // 100)
    assert [s["lr"] for s in ts.history.steps] == [s["lr"] for s in tb.history.steps]
    np.testing.assert_allclose([s["loss"] for s in ts.history.steps],
                               [s["loss"] for s in tb.history.steps], rtol=1e-12)
    assert all(p.grad is None and not p.accumulate for p in small.parameters().values())


def test_accumulate_is_validated():
    model = TwoLayerNet(6, 4, 3)
    with pytest.raises(ValueError, match="accumulate must be a positive integer, got 0"):
        Trainer(model, xpnet.SGD(model), accumulate=0)


def test_early_stopping_stops_after_patience_and_resumes_its_count(tmp_path):
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    ck = tmp_path / "ck.npz"
    # lr 0: the test loss never improves after the first epoch
    trainer = Trainer(model, xpnet.SGD(model, lr=0.0), batch_size=40,
                      callbacks=[EarlyStopping("test_loss", patience=2), SaveCheckpoint(ck)])
    trainer.fit(x, y, 10, x_test=x, y_test=y)
    assert trainer.stopped_early and trainer.epoch == 3 and len(trainer.history) == 3
    stopper = EarlyStopping("test_loss", patience=3)
    resumed = Trainer(model, xpnet.SGD(model, lr=0.0), batch_size=40, callbacks=[stopper])
    resumed.resume(ck)
    assert stopper.wait == 2 and stopper.best_epoch == 1
    resumed.fit(x, y, 10, x_test=x, y_test=y)
    assert resumed.epoch == 4  # one more epoch without improvement reaches patience 3


def test_early_stopping_is_checked_before_training():
    x, y = _data()
    model = TwoLayerNet(6, 4, 3)
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="monitors 'test_loss', but fit was given no x_test"):
        trainer.fit(x, y, 2)
    assert trainer.epoch == 0
    with pytest.raises(ValueError, match="patience must be a positive integer, got 0"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode must be"):
        EarlyStopping(mode="lowest")
    bad = Trainer(model, xpnet.SGD(model, lr=0.1), callbacks=[EarlyStopping("tset_loss")])
    with pytest.raises(ValueError, match="'tset_loss' is not in the epoch record"):
        bad.fit(x, y, 1, x_test=x, y_test=y)


def test_keep_best_saves_the_best_epoch(tmp_path):
    x, y = _data(n=300)
    y = (x[:, 0] > 0).astype(np.int64)
    xt, yt = x[:100], y[:100]
    model = TwoLayerNet(6, 16, 2)
    best = tmp_path / "best.npz"
    trainer = Trainer(model, xpnet.Adam(model, lr=3e-2), batch_size=50,
                      callbacks=[KeepBest(tmp_path / "acc.npz", "test_acc"), KeepBest(best)])
    history = trainer.fit(x, y, 6, x_test=xt, y_test=yt)
    want = int(np.argmin(history["test_loss"])) + 1
    assert load_checkpoint(best).meta["epoch"] == want
    want_acc = int(np.argmax(history["test_acc"])) + 1  # the first epoch reaching the maximum
    assert load_checkpoint(tmp_path / "acc.npz").meta["epoch"] == want_acc
    restored = TwoLayerNet(6, 16, 2, seed=9)
    restored.load_state_dict(load_checkpoint(best).model)
    assert Trainer(restored, xpnet.SGD(restored)).evaluate(xt, yt)["loss"] == pytest.approx(
        history["test_loss"][want - 1], rel=1e-6)
