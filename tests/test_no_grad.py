"""xpnet.no_grad: forwards inside keep nothing for backward (evaluation memory), give the same
outputs, refuse a backward by name, and the mode is restored and per thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import dev, to_np

import xpnet
from xpnet.grad_mode import grad_enabled
from xpnet.train import evaluate, predict


def _net(seed=0):
    rng = xpnet.Generator(seed)
    return xpnet.Sequential(
        xpnet.Conv2d(1, 4, 3, padding=1, rng=rng, dtype="float64"), xpnet.ReLU(),
        xpnet.MaxPool2d(2), xpnet.ConvMaxPool2d(4, 4, 3, padding=1, rng=rng, dtype="float64"),
        xpnet.BatchNorm(4, dtype="float64"), xpnet.Tanh(), xpnet.Flatten(),
        xpnet.Linear(4 * 2 * 2, 6, rng=rng, dtype="float64"), xpnet.GELU(), xpnet.ELU(),
        xpnet.LayerNorm(6, dtype="float64"), xpnet.Dropout(0.5, rng=xpnet.Generator(1)),
        xpnet.Sigmoid(), xpnet.Linear(6, 3, rng=rng, dtype="float64"))


def _cached(model):
    """Every layer that holds a forward call's record for a backward."""
    return [layer for layer in model.layers if layer.__dict__.get("_calls")]


def test_no_grad_forward_matches_and_keeps_nothing(backend):
    model = _net()
    model.eval()
    x = dev(np.random.default_rng(0).standard_normal((5, 1, 8, 8)))
    y = to_np(model(x))
    assert _cached(model)  # an ordinary forward caches (the test can fail)
    with xpnet.no_grad():
        assert not grad_enabled()
        y_no = to_np(model(x))
    assert grad_enabled()
    np.testing.assert_array_equal(y_no, y)
    assert _cached(model) == []
    with pytest.raises(RuntimeError, match=r"no_grad\(\) caches nothing"):
        model.backward(dev(np.ones((5, 3))))
    model.train()
    model(x)  # a forward outside it: backward works again (pools need training mode)
    assert model.backward(dev(np.ones((5, 3)))).shape == (5, 1, 8, 8)


def test_no_grad_is_restored_after_an_error_and_nests():
    with pytest.raises(ValueError):
        with xpnet.no_grad():
            with xpnet.no_grad():
                pass
            assert not grad_enabled()
            raise ValueError("boom")
    assert grad_enabled()


def test_no_grad_is_per_thread():
    seen = []
    with xpnet.no_grad():
        t = threading.Thread(target=lambda: seen.append(grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_evaluate_and_predict_leave_no_caches(backend):
    model = _net()
    x = np.random.default_rng(1).standard_normal((7, 1, 8, 8))
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    model(dev(x))
    assert _cached(model)
    evaluate(model, xpnet.SoftmaxCrossEntropy(), x, y, batch_size=3)
    assert _cached(model) == [] and model.training
    model(dev(x))
    predict(model, x, batch_size=4)
    assert _cached(model) == []


def test_a_subclass_calling_its_bases_forward_keeps_one_record_and_none_under_no_grad(
        backend):
    class Scaled(xpnet.Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

        def backward(self, dout, *, input_grad=True):
            return super().backward(dout * 2.0, input_grad=input_grad)

    layer = Scaled(3, 2, dtype="float64", rng=xpnet.Generator(0))
    x = dev(np.ones((4, 3)))
    layer(x)
    assert len(layer._calls) == 1  # the base's forward adds no second record
    np.testing.assert_allclose(to_np(layer.backward(dev(np.ones((4, 2))))),
                               np.ones((4, 2)) @ to_np(layer.W.data).T * 2.0)
    layer(x)
    with xpnet.no_grad():
        layer(x)
    assert not layer._calls  # the base's record too
    with pytest.raises(RuntimeError, match=r"no_grad\(\) caches nothing"):
        layer.backward(dev(np.ones((4, 2))))


def test_summary_leaves_no_caches_behind(backend):
    """summary's forward on a batch of zeros must not pose as the last training batch."""
    model = _net()
    model.summary((1, 8, 8))
    assert _cached(model) == []
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(dev(np.ones((2, 3))))
