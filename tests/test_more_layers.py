"""GELU, ELU, Identity, LayerNorm and GlobalAvgPool2d: float64 gradient checks on every
backend, values against hand formulas, named input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_gradients_close, dev, to_np

import xpnet
from xpnet.gradcheck import check_module


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _gradcheck(module, x_host, keys):
    assert_gradients_close(check_module(module, dev(x_host)), keys)


def test_gelu_gradcheck_and_values(backend):
    _gradcheck(xpnet.GELU(), _rand((4, 5)) * 2, {"x"})
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    got = to_np(xpnet.GELU()(dev(x)))
    np.testing.assert_allclose(got, exact, atol=1e-3)  # the tanh approximation
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(got, tanh_form, rtol=1e-12)


def test_elu_gradcheck_and_values(backend):
    x = _rand((4, 5))
    x = np.sign(x) * (0.1 + np.abs(x))  # away from the kink at 0
    _gradcheck(xpnet.ELU(0.7), x, {"x"})
    got = to_np(xpnet.ELU(0.7)(dev(np.array([-2.0, 0.0, 3.0]))))
    np.testing.assert_allclose(got, [0.7 * (math.exp(-2.0) - 1), 0.0, 3.0], rtol=1e-12)
    with pytest.raises(ValueError, match="alpha must be a positive number, got 0"):
        xpnet.ELU(0)


def test_identity_gradcheck(backend):
    _gradcheck(xpnet.Identity(), _rand((3, 4)), {"x"})


@pytest.mark.parametrize("shape,normalized", [((4, 6), 6), ((2, 3, 4, 5), (4, 5))])
def test_layernorm_gradcheck(backend, shape, normalized):
    layer = xpnet.LayerNorm(normalized, dtype="float64")
    k = len(layer.normalized_shape)
    layer.gamma.data = dev(1.0 + 0.5 * _rand(layer.normalized_shape, seed=3))
    layer.beta.data = dev(_rand(layer.normalized_shape, seed=4))
    _gradcheck(layer, _rand(shape) * 2 + 1, {"x", "gamma", "beta"})
    x = _rand(shape)
    axes = tuple(range(len(shape) - k, len(shape)))
    want = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(
        x.var(axis=axes, keepdims=True) + 1e-5)
    layer = xpnet.LayerNorm(normalized, dtype="float64")
    np.testing.assert_allclose(to_np(layer(dev(x))), want, rtol=1e-10, atol=1e-12)


def test_layernorm_errors_name_the_input():
    layer = xpnet.LayerNorm(6)
    with pytest.raises(ValueError, match=r"LayerNorm\(6, eps=1e-05\): input x has shape "
                                         r"\(2, 5\); expected \(N, ..., 6\)"):
        layer(xpnet.to_device(np.zeros((2, 5), np.float32)))
    with pytest.raises(TypeError, match="dtype float64; expected float32"):
        layer(xpnet.to_device(np.zeros((2, 6))))
    with pytest.raises(ValueError, match="normalized_shape must be a positive integer"):
        xpnet.LayerNorm(0)


def test_global_avg_pool_gradcheck_and_values(backend):
    _gradcheck(xpnet.GlobalAvgPool2d(), _rand((2, 3, 4, 5)), {"x"})
    x = _rand((2, 3, 4, 5))
    np.testing.assert_allclose(to_np(xpnet.GlobalAvgPool2d()(dev(x))), x.mean(axis=(2, 3)),
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d\(\): input x has shape \(2, 3\)"):
        xpnet.GlobalAvgPool2d()(dev(np.zeros((2, 3))))
