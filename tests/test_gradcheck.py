"""The gradient checker itself (xpnet/gradcheck.py) must catch wrong gradients."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RTOL, dev, to_np

import xpnet
from xpnet.gradcheck import check_loss, check_module, numerical_gradient


def test_numerical_gradient_of_a_known_function():
    x = np.array([[0.5, -1.0], [2.0, 0.1]])
    original = x.copy()
    grad = numerical_gradient(lambda h: float(np.sum(h**3)), x)
    np.testing.assert_allclose(grad, 3 * original**2, rtol=1e-8)
    np.testing.assert_array_equal(x, original)  # restored


class _BrokenTanh(xpnet.Tanh):
    def backward(self, dout):
        (y,) = self.saved()
        return dout * (1.0 - y)  # wrong: should be 1 - y**2


class _BrokenLinear(xpnet.Linear):
    def backward(self, dout):
        dx = super().backward(dout)
        self.W.grad = self.W.grad * 1.01  # a 1% error in one parameter's gradient
        return dx


class _BrokenMSE(xpnet.MSE):
    def backward(self, dloss=1.0):
        return super().backward(dloss) * 0.5  # forgets the factor 2


def test_check_module_catches_a_wrong_input_gradient(backend):
    x = dev(np.random.default_rng(0).standard_normal((3, 4)))
    analytic, numeric = check_module(_BrokenTanh(), x)["x"]
    assert not np.allclose(analytic, numeric, rtol=RTOL)
    good_analytic, good_numeric = check_module(xpnet.Tanh(), x)["x"]
    np.testing.assert_allclose(good_analytic, good_numeric, rtol=RTOL)


def test_check_module_catches_a_wrong_parameter_gradient(backend):
    layer = _BrokenLinear(3, 2, dtype="float64")
    results = check_module(layer, dev(np.random.default_rng(0).standard_normal((4, 3))))
    np.testing.assert_allclose(*results["x"], rtol=RTOL)
    np.testing.assert_allclose(*results["b"], rtol=RTOL)
    assert not np.allclose(*results["W"], rtol=RTOL)


def test_check_loss_catches_a_wrong_loss_gradient(backend):
    rng = np.random.default_rng(0)
    y, t = dev(rng.standard_normal((3, 2))), dev(rng.standard_normal((3, 2)))
    assert not np.allclose(*check_loss(_BrokenMSE(), y, t), rtol=RTOL)
    np.testing.assert_allclose(*check_loss(xpnet.MSE(), y, t), rtol=RTOL)


def test_check_module_restores_parameters(backend):
    layer = xpnet.Linear(3, 2, dtype="float64")
    w, b = layer.W.data, layer.b.data
    before = to_np(w).copy()
    check_module(layer, dev(np.ones((2, 3))))
    assert layer.W.data is w and layer.b.data is b
    np.testing.assert_array_equal(to_np(layer.W.data), before)


def test_check_module_gives_a_verdict(backend):
    from xpnet.gradcheck import GradientCheckError

    x = dev(np.random.default_rng(0).standard_normal((4, 3)))
    good = check_module(xpnet.Linear(3, 2, dtype="float64"), x)
    assert good.ok and good.failed == [] and good.raise_if_failed() is good
    assert set(good.max_errors) == {"x", "W", "b"} and max(good.max_errors.values()) < 1e-7
    bad = check_module(_BrokenLinear(3, 2, dtype="float64"), x)
    assert not bad.ok and bad.failed == ["W"]
    assert bad.max_errors["W"] > 1e-4 > bad.max_errors["b"]
    with pytest.raises(GradientCheckError, match=r"for W \(max abs error .*\); rtol=1e-05"):
        bad.raise_if_failed()
    assert "ok=False" in repr(bad)
