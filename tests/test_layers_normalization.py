"""BatchNorm and LayerNorm (xpnet/layers/normalization.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import gradcheck, rand

import xpnet


@pytest.mark.parametrize("shape", [(6, 3), (3, 3, 2, 3)], ids=["2d", "4d"])
def test_batchnorm_train_gradcheck(backend, shape):
    bn = xpnet.BatchNorm(3, dtype="float64")
    bn.gamma.data = dev(1.0 + 0.5 * rand(3, seed=2))
    bn.beta.data = dev(rand(3, seed=3))
    gradcheck(bn, rand(shape) * 2 + 1, {"x", "gamma", "beta"})


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)], ids=["2d", "4d"])
def test_batchnorm_eval_gradcheck(backend, shape):
    bn = xpnet.BatchNorm(3, dtype="float64")
    bn.gamma.data = dev(1.0 + 0.5 * rand(3, seed=2))
    bn.running_mean = dev(rand(3, seed=4))
    bn.running_var = dev(0.5 + np.abs(rand(3, seed=5)))
    bn.eval()
    gradcheck(bn, rand(shape), {"x", "gamma", "beta"})


def test_batchnorm_train_normalises_with_batch_statistics(backend):
    x = rand((10, 3)) * np.array([1.0, 5.0, 0.1]) + np.array([2.0, -1.0, 7.0])
    bn = xpnet.BatchNorm(3, dtype="float64")
    y = to_np(bn(dev(x)))
    expected = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + bn.eps)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 3)], ids=["2d", "4d"])
def test_batchnorm_running_stats_update(backend, shape):
    """running = (1 - momentum) * running + momentum * batch, with the unbiased batch var."""
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bn = xpnet.BatchNorm(3, momentum=0.2, dtype="float64")
    mean, var = np.zeros(3), np.ones(3)
    for seed in range(3):
        x = rand(shape, seed) * 3 + seed
        bn(dev(x))
        mean = 0.8 * mean + 0.2 * x.mean(axis=axes)
        var = 0.8 * var + 0.2 * x.var(axis=axes, ddof=1)
        np.testing.assert_allclose(to_np(bn.running_mean), mean, rtol=1e-12)
        np.testing.assert_allclose(to_np(bn.running_var), var, rtol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)], ids=["2d", "4d"])
def test_batchnorm_eval_uses_running_stats(backend, shape):
    bshape = (1, 3) if len(shape) == 2 else (1, 3, 1, 1)
    bn = xpnet.BatchNorm(3, dtype="float64")
    for seed in range(2):
        bn(dev(rand(shape, seed) + 1.0))
    rm, rv = to_np(bn.running_mean).copy(), to_np(bn.running_var).copy()
    gamma, beta = 1.0 + rand(3, seed=7) ** 2, rand(3, seed=8)
    bn.gamma.data, bn.beta.data = dev(gamma), dev(beta)
    bn.eval()
    x = rand(shape, seed=9)
    y = to_np(bn(dev(x)))
    expected = ((x - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + bn.eps)
                * gamma.reshape(bshape) + beta.reshape(bshape))
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(to_np(bn.running_mean), rm)  # eval does not update them
    np.testing.assert_array_equal(to_np(bn.running_var), rv)


def test_batchnorm_buffers_are_independent_of_parameters(backend):
    """An optimizer updating gamma/beta in place must not move the running statistics."""
    bn = xpnet.BatchNorm(3, dtype="float64").eval()
    bn.gamma.grad = dev(np.ones(3))
    bn.beta.grad = dev(np.ones(3))
    xpnet.SGD(bn, lr=0.5).step()
    np.testing.assert_array_equal(to_np(bn.gamma.data), np.full(3, 0.5))
    np.testing.assert_array_equal(to_np(bn.running_var), np.ones(3))
    np.testing.assert_array_equal(to_np(bn.running_mean), np.zeros(3))


def test_batchnorm_wrong_channels_names_both_shapes(backend):
    bn = xpnet.BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm\(3.*\(4, 5\).*\(N, 3\)"):
        bn(dev(np.zeros((4, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"\(4, 3, 2\)"):
        bn(dev(np.zeros((4, 3, 2), dtype=np.float32)))


def test_batchnorm_training_needs_more_than_one_value(backend):
    with pytest.raises(ValueError, match="more than one value"):
        xpnet.BatchNorm(3)(dev(np.zeros((1, 3), dtype=np.float32)))


@pytest.mark.parametrize("shape,normalized", [((4, 6), 6), ((2, 3, 4, 5), (4, 5))])
def test_layernorm_gradcheck(backend, shape, normalized):
    layer = xpnet.LayerNorm(normalized, dtype="float64")
    k = len(layer.normalized_shape)
    layer.gamma.data = dev(1.0 + 0.5 * rand(layer.normalized_shape, seed=3))
    layer.beta.data = dev(rand(layer.normalized_shape, seed=4))
    gradcheck(layer, rand(shape) * 2 + 1, {"x", "gamma", "beta"})
    x = rand(shape)
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


@pytest.mark.parametrize("make,match", [
    (lambda: xpnet.BatchNorm(0), "num_features.*0"),
    (lambda: xpnet.BatchNorm(3, momentum=1.5), "momentum.*1.5"),
    (lambda: xpnet.BatchNorm(3, eps=0.0), "eps"),
], ids=["bn-0", "bn-momentum", "bn-eps"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
