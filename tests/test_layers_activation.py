"""Activations (xpnet/layers/activation.py): float64 gradient checks on every backend,
values against NumPy and hand formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import away_from_zero, gradcheck, rand

import xpnet


def test_relu_gradcheck(backend):
    gradcheck(xpnet.ReLU(), away_from_zero((4, 5)), {"x"})


def test_leaky_relu_gradcheck(backend):
    gradcheck(xpnet.LeakyReLU(0.2), away_from_zero((4, 5)), {"x"})


def test_sigmoid_gradcheck(backend):
    gradcheck(xpnet.Sigmoid(), rand((4, 5)) * 3, {"x"})


def test_tanh_gradcheck(backend):
    gradcheck(xpnet.Tanh(), rand((4, 5)), {"x"})


def test_softmax_gradcheck(backend):
    gradcheck(xpnet.Softmax(), rand((3, 4)), {"x"})


def test_softmax_last_axis_gradcheck(backend):
    gradcheck(xpnet.Softmax(axis=-1), rand((2, 2, 3)), {"x"})


def test_activations_forward_match_numpy(backend):
    x = np.array([[-3.0, -0.5, 0.0, 0.25, 4.0]])
    np.testing.assert_allclose(to_np(xpnet.ReLU()(dev(x))), np.maximum(x, 0.0))
    np.testing.assert_allclose(to_np(xpnet.LeakyReLU(0.1)(dev(x))), np.where(x > 0, x, 0.1 * x))
    np.testing.assert_allclose(to_np(xpnet.Tanh()(dev(x))), np.tanh(x), rtol=1e-12)
    np.testing.assert_allclose(to_np(xpnet.Sigmoid()(dev(x))), 1.0 / (1.0 + np.exp(-x)),
                               rtol=1e-12)


def test_sigmoid_is_stable_for_large_inputs(backend):
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    y = to_np(xpnet.Sigmoid()(dev(x)))
    assert np.all(np.isfinite(y))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=0)


def test_softmax_forward_is_stable_and_normalised(backend):
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]])
    y = to_np(xpnet.Softmax()(dev(x)))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-12)


def test_gelu_gradcheck_and_values(backend):
    gradcheck(xpnet.GELU(), rand((4, 5)) * 2, {"x"})
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    got = to_np(xpnet.GELU()(dev(x)))
    np.testing.assert_allclose(got, exact, atol=1e-3)  # the tanh approximation
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(got, tanh_form, rtol=1e-12)


def test_elu_gradcheck_and_values(backend):
    x = rand((4, 5))
    x = np.sign(x) * (0.1 + np.abs(x))  # away from the kink at 0
    gradcheck(xpnet.ELU(0.7), x, {"x"})
    got = to_np(xpnet.ELU(0.7)(dev(np.array([-2.0, 0.0, 3.0]))))
    np.testing.assert_allclose(got, [0.7 * (math.exp(-2.0) - 1), 0.0, 3.0], rtol=1e-12)
    with pytest.raises(ValueError, match="alpha must be a positive number, got 0"):
        xpnet.ELU(0)


def test_identity_gradcheck(backend):
    gradcheck(xpnet.Identity(), rand((3, 4)), {"x"})


@pytest.mark.parametrize("make,match", [
    (lambda: xpnet.LeakyReLU(-0.1), "slope.*-0.1"),
], ids=["leaky-slope"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
