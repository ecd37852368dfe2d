"""The Trainer's parts (xpnet/train/): train_step, evaluate/predict, Totals, per-step history,
the divergence guard, data checks and progress output."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import class_data, dev, to_np

import xpnet
from xpnet.models import TwoLayerNet
from xpnet.train import (
    Accuracy,
    DivergenceGuard,
    MeanSquaredError,
    Progress,
    Totals,
    Trainer,
    TrainingDiverged,
    check_data,
    epoch_line,
    evaluate,
    predict,
    train_step,
)
from xpnet.train import metrics as metrics_module


def test_train_step_is_forward_backward_step(backend):
    x, y = class_data(n=20)
    a, b = TwoLayerNet(5, 7, 3, seed=1), TwoLayerNet(5, 7, 3, seed=1)
    oa, ob = xpnet.SGD(a, lr=0.1), xpnet.SGD(b, lr=0.1)
    xb, yb = dev(x), dev(y)
    loss = xpnet.SoftmaxCrossEntropy()
    out = train_step(a, loss, oa, xb, yb)
    # by hand
    ref = xpnet.SoftmaxCrossEntropy()
    value = ref.forward(b.forward(xb), yb)
    b.backward(ref.backward())
    ob.step()
    assert float(out.loss) == pytest.approx(float(value), rel=1e-6)
    assert tuple(out.output.shape) == (20, 3)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_allclose(pa, pb, rtol=1e-6, atol=1e-7, err_msg=k)


def test_train_step_without_step_leaves_parameters(backend):
    x, y = class_data(n=20)
    model = TwoLayerNet(5, 7, 3, seed=1)
    before = model.state_dict()
    train_step(model, xpnet.SoftmaxCrossEntropy(), xpnet.SGD(model, lr=0.1), dev(x), dev(y),
               step=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert all(p.grad is not None for p in model.parameters().values())


def test_evaluate_matches_a_manual_pass_with_one_host_read(backend, monkeypatch):
    x, y = class_data(n=250)
    model = TwoLayerNet(5, 7, 3, seed=2)
    model.train()
    reads = []
    real = metrics_module.to_numpy
    monkeypatch.setattr(metrics_module, "to_numpy", lambda a: reads.append(1) or real(a))
    got = evaluate(model, xpnet.SoftmaxCrossEntropy(), x, y, batch_size=100)
    assert len(reads) == 1 and model.training  # one read for 3 batches; mode restored
    model.eval()
    logits = to_np(model.forward(dev(x)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert got["loss"] == pytest.approx(-logp[np.arange(250), y].mean(), rel=1e-5)
    assert got["acc"] == np.mean(logits.argmax(axis=1) == y)
    assert predict(model, x, batch_size=100).tolist() == logits.argmax(axis=1).tolist()
    np.testing.assert_allclose(predict(model, x, classes=False), logits, rtol=1e-6)


def test_evaluate_regression_reports_mse_and_no_accuracy(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    t = rng.standard_normal((30, 3)).astype(np.float32)
    model = TwoLayerNet(5, 7, 3, seed=2)
    got = evaluate(model, xpnet.MSE(), x, t, metrics=[MeanSquaredError()], batch_size=7)
    out = predict(model, x, classes=False)
    assert set(got) == {"loss", "mse"}
    assert got["loss"] == pytest.approx(np.mean((out - t) ** 2), rel=1e-5)
    assert got["mse"] == pytest.approx(got["loss"], rel=1e-5)


def test_evaluate_refuses_mismatched_or_empty_data():
    model = TwoLayerNet(5, 7, 3)
    x, y = class_data(n=10)
    with pytest.raises(ValueError, match="10 inputs but 9 targets"):
        evaluate(model, xpnet.SoftmaxCrossEntropy(), x, y[:9])
    with pytest.raises(ValueError, match="x is empty"):
        evaluate(model, xpnet.SoftmaxCrossEntropy(), x[:0], y[:0])


def test_totals_weighting_and_per_step_losses(backend):
    xp = backend.xp
    out = xp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = xp.asarray([0, 0, 0])
    train, ev = Totals([Accuracy()], keep_steps=True), Totals([Accuracy()], weighted=True)
    for tot in (train, ev):
        tot.add(xp.asarray(1.0), out, t)            # 3 examples, 2 correct
        tot.add(xp.asarray(4.0), out[:1, ...], t[:1])  # 1 example, 1 correct
    assert train.read() == ({"loss": 2.5, "acc": 0.75}, [1.0, 4.0])
    assert ev.read() == ({"loss": (3 * 1.0 + 4.0) / 4, "acc": 0.75}, [])
    assert train.mean_loss() == 2.5


def test_history_has_one_record_per_step_without_extra_reads(backend):
    x, y = class_data(n=90)
    model = TwoLayerNet(5, 7, 3, seed=3)
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=20)
    history = trainer.fit(x, y, 2)
    assert [s["step"] for s in history.steps] == list(range(1, 11))  # 5 batches x 2 epochs
    assert [s["epoch"] for s in history.steps] == [1] * 5 + [2] * 5
    for e in (1, 2):
        losses = [s["loss"] for s in history.steps if s["epoch"] == e]
        assert np.mean(losses) == pytest.approx(history["loss"][e - 1], rel=1e-6)


def test_divergence_guard_names_where_and_the_checkpoint(tmp_path):
    DivergenceGuard().check(1.0, 1, 1)
    ck = tmp_path / "ck.npz"
    with pytest.raises(TrainingDiverged, match=r"inf at epoch 3, step 7.*ck.npz was not written"):
        DivergenceGuard(ck).check(float("inf"), 3, 7)
    ck.write_bytes(b"an earlier epoch")
    with pytest.raises(TrainingDiverged, match=r"inf at epoch 3, step 7.*ck.npz was left"):
        DivergenceGuard(ck).check(float("inf"), 3, 7)
    guard = DivergenceGuard(factor=10)
    guard.set_reference(2.0)
    guard.check(19.9, 1, 1)
    with pytest.raises(TrainingDiverged, match=r"loss 20.1 .* more than 10 times .* \(2\)"):
        guard.check(20.1, 1, 2)


def test_check_data_accepts_device_arrays(backend):
    x, y = class_data(n=12)
    model = TwoLayerNet(5, 7, 3)
    check_data(model, xpnet.SoftmaxCrossEntropy(), dev(x), dev(y), "training data")
    with pytest.raises(ValueError, match=r"training data labels.*\[0, 2\]"):
        check_data(model, xpnet.SoftmaxCrossEntropy(), dev(x), dev(y + 1), "training data")
    # a regression loss takes any targets
    check_data(model, xpnet.MSE(), x, np.zeros((12, 3), np.float32), "training data")
    scores = evaluate(model, xpnet.SoftmaxCrossEntropy(), dev(x), dev(y), batch_size=5)
    assert scores == evaluate(model, xpnet.SoftmaxCrossEntropy(), x, y, batch_size=5)


def test_progress_disabled_prints_nothing(capsys):
    x, y = class_data(n=20)
    model = TwoLayerNet(5, 7, 3)
    quiet = Progress(enabled=False, verbose=False)
    Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=10, log_interval=1,
            callbacks=[quiet]).fit(x, y, 1)
    assert capsys.readouterr().err == ""
    line = epoch_line({"epoch": 1, "loss": 0.5, "lr": 0.1, "seconds": 1.0, "test_loss": 0.6})
    assert "acc" not in line and "test loss 0.6000" in line


