"""Dense layers, activations, Dropout, BatchNorm, Flatten and Sequential (xpnet/layers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_gradients_close, dev, to_np

import xpnet
from xpnet.gradcheck import check_module


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _away_from_zero(shape, seed=0):
    """Random values with |v| >= 0.1, so kinks (ReLU) are far from the finite differences."""
    r = _rand(shape, seed)
    return np.sign(r) * (0.1 + np.abs(r))


def _gradcheck(module, x_host, expected_keys, **kw):
    results = check_module(module, dev(x_host), **kw)
    assert_gradients_close(results, expected_keys)
    return results


# ---------------------------------------------------------------------- gradient checks
def test_linear_gradcheck(backend):
    layer = xpnet.Linear(4, 3, dtype="float64", rng=xpnet.Generator(1))
    layer.b.data = dev(_rand(3, seed=9))  # a non-zero bias
    _gradcheck(layer, _rand((5, 4)), {"x", "W", "b"})


def test_linear_without_bias_gradcheck(backend):
    layer = xpnet.Linear(4, 3, bias=False, dtype="float64")
    assert layer.b is None and set(layer.parameters()) == {"W"}
    _gradcheck(layer, _rand((2, 4)), {"x", "W"})


def test_relu_gradcheck(backend):
    _gradcheck(xpnet.ReLU(), _away_from_zero((4, 5)), {"x"})


def test_leaky_relu_gradcheck(backend):
    _gradcheck(xpnet.LeakyReLU(0.2), _away_from_zero((4, 5)), {"x"})


def test_sigmoid_gradcheck(backend):
    _gradcheck(xpnet.Sigmoid(), _rand((4, 5)) * 3, {"x"})


def test_tanh_gradcheck(backend):
    _gradcheck(xpnet.Tanh(), _rand((4, 5)), {"x"})


def test_softmax_gradcheck(backend):
    _gradcheck(xpnet.Softmax(), _rand((3, 4)), {"x"})


def test_softmax_last_axis_gradcheck(backend):
    _gradcheck(xpnet.Softmax(axis=-1), _rand((2, 2, 3)), {"x"})


def test_dropout_gradcheck_with_a_fixed_mask(backend):
    layer = xpnet.Dropout(0.4)

    def reseed():
        layer.rng = xpnet.Generator(11)

    results = _gradcheck(layer, _rand((6, 5)), {"x"}, before_forward=reseed)
    analytic = results["x"][0]
    assert np.any(analytic == 0.0) and np.any(analytic != 0.0)  # some units really dropped


@pytest.mark.parametrize("shape", [(6, 3), (3, 3, 2, 3)], ids=["2d", "4d"])
def test_batchnorm_train_gradcheck(backend, shape):
    bn = xpnet.BatchNorm(3, dtype="float64")
    bn.gamma.data = dev(1.0 + 0.5 * _rand(3, seed=2))
    bn.beta.data = dev(_rand(3, seed=3))
    _gradcheck(bn, _rand(shape) * 2 + 1, {"x", "gamma", "beta"})


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)], ids=["2d", "4d"])
def test_batchnorm_eval_gradcheck(backend, shape):
    bn = xpnet.BatchNorm(3, dtype="float64")
    bn.gamma.data = dev(1.0 + 0.5 * _rand(3, seed=2))
    bn.running_mean = dev(_rand(3, seed=4))
    bn.running_var = dev(0.5 + np.abs(_rand(3, seed=5)))
    bn.eval()
    _gradcheck(bn, _rand(shape), {"x", "gamma", "beta"})


def test_flatten_gradcheck(backend):
    _gradcheck(xpnet.Flatten(), _rand((2, 3, 2, 2)), {"x"})


def test_sequential_gradcheck(backend):
    rng = xpnet.Generator(3)
    model = xpnet.Sequential(
        xpnet.Linear(4, 5, dtype="float64", rng=rng), xpnet.Tanh(),
        xpnet.BatchNorm(5, dtype="float64"), xpnet.Linear(5, 3, dtype="float64", rng=rng),
        xpnet.Sigmoid())
    _gradcheck(model, _rand((4, 4)),
               {"x", "0.W", "0.b", "2.gamma", "2.beta", "3.W", "3.b"})


# ---------------------------------------------------------------------- forward values
def test_linear_forward_matches_numpy(backend):
    layer = xpnet.Linear(4, 3, dtype="float64", rng=xpnet.Generator(2))
    layer.b.data = dev(_rand(3, seed=1))
    x = _rand((5, 4))
    expected = x @ to_np(layer.W.data) + to_np(layer.b.data)
    np.testing.assert_allclose(to_np(layer(dev(x))), expected, rtol=1e-12)


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


def test_flatten_shapes(backend):
    layer = xpnet.Flatten()
    x = _rand((2, 3, 4, 5))
    y = layer(dev(x))
    assert tuple(y.shape) == (2, 60)
    np.testing.assert_array_equal(to_np(y), x.reshape(2, 60))
    assert tuple(layer.backward(y).shape) == (2, 3, 4, 5)


# ---------------------------------------------------------------------- Dropout
def test_dropout_eval_is_identity(backend):
    layer = xpnet.Dropout(0.5).eval()
    x = dev(_rand((4, 6)))
    y = layer(x)
    np.testing.assert_array_equal(to_np(y), to_np(x))
    dout = dev(_rand((4, 6), seed=1))
    np.testing.assert_array_equal(to_np(layer.backward(dout)), to_np(dout))


def test_dropout_p_zero_is_identity_in_training(backend):
    x = dev(_rand((4, 6)))
    np.testing.assert_array_equal(to_np(xpnet.Dropout(0.0)(x)), to_np(x))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_train_zero_fraction_and_scaling(backend, p):
    x_host = 1.0 + np.abs(_rand((100, 200)))  # no zeros in the input
    layer = xpnet.Dropout(p, rng=xpnet.Generator(5))
    y = to_np(layer(dev(x_host)))
    dropped = y == 0.0
    # 20000 units: the zero fraction's std is below 0.0036, so 0.02 is over 5 sigma
    assert abs(dropped.mean() - p) < 0.02
    np.testing.assert_allclose(y[~dropped], x_host[~dropped] / (1.0 - p), rtol=1e-6)
    # backward uses the same mask and scale
    g = to_np(layer.backward(dev(np.ones_like(x_host))))
    np.testing.assert_array_equal(g == 0.0, dropped)
    np.testing.assert_allclose(g[~dropped], 1.0 / (1.0 - p), rtol=1e-6)


def test_dropout_same_seed_same_mask(backend):
    x = dev(_rand((8, 9)))
    a = to_np(xpnet.Dropout(0.5, rng=xpnet.Generator(3))(x))
    b = to_np(xpnet.Dropout(0.5, rng=xpnet.Generator(3))(x))
    c = to_np(xpnet.Dropout(0.5, rng=xpnet.Generator(4))(x))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a == 0, c == 0)


def test_dropout_draws_a_new_mask_each_call(backend):
    layer = xpnet.Dropout(0.5, rng=xpnet.Generator(3))
    x = dev(np.ones((8, 9)))
    assert not np.array_equal(to_np(layer(x)), to_np(layer(x)))


# ---------------------------------------------------------------------- BatchNorm
def test_batchnorm_train_normalises_with_batch_statistics(backend):
    x = _rand((10, 3)) * np.array([1.0, 5.0, 0.1]) + np.array([2.0, -1.0, 7.0])
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
        x = _rand(shape, seed) * 3 + seed
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
        bn(dev(_rand(shape, seed) + 1.0))
    rm, rv = to_np(bn.running_mean).copy(), to_np(bn.running_var).copy()
    gamma, beta = 1.0 + _rand(3, seed=7) ** 2, _rand(3, seed=8)
    bn.gamma.data, bn.beta.data = dev(gamma), dev(beta)
    bn.eval()
    x = _rand(shape, seed=9)
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


# ---------------------------------------------------------------------- Sequential
def test_sequential_names_parameters_by_index(backend):
    model = xpnet.Sequential(xpnet.Linear(3, 4), xpnet.ReLU(), xpnet.BatchNorm(4),
                             xpnet.Linear(4, 2))
    assert list(model.parameters()) == ["0.W", "0.b", "2.gamma", "2.beta", "3.W", "3.b"]
    assert list(model.buffers()) == ["2.running_mean", "2.running_var"]
    assert len(model) == 4 and model[2] is model.layers[2]
    assert "(3) Linear(4 -> 2)" in repr(model)


def test_sequential_backward_without_input_grad_gives_the_same_param_grads(backend):
    rng = xpnet.Generator(4)
    model = xpnet.Sequential(xpnet.Linear(4, 6, dtype="float64", rng=rng), xpnet.ReLU(),
                             xpnet.Linear(6, 3, dtype="float64", rng=rng))
    x, dout = dev(_rand((5, 4))), dev(_rand((5, 3), seed=1))
    model(x)
    dx = model.backward(dout)
    assert tuple(dx.shape) == (5, 4)
    full = {k: to_np(p.grad).copy() for k, p in model.parameters().items()}
    model.zero_grad()
    model(x)
    assert model.backward(dout, input_grad=False) is None
    for k, p in model.parameters().items():
        np.testing.assert_allclose(to_np(p.grad), full[k], rtol=1e-14, err_msg=k)


def test_train_and_eval_propagate_to_children(backend):
    model = xpnet.Sequential(xpnet.Linear(2, 2), xpnet.Dropout(0.5), xpnet.BatchNorm(2))
    model.eval()
    assert not any(layer.training for layer in model.layers) and not model.training
    model.train()
    assert all(layer.training for layer in model.layers) and model.training


# ---------------------------------------------------------------------- bad input (item 9)
def test_linear_wrong_feature_count_names_layer_and_both_shapes(backend):
    layer = xpnet.Linear(784, 100)
    x = dev(np.zeros((2, 783), dtype=np.float32))
    with pytest.raises(ValueError) as info:
        layer(x)
    msg = str(info.value)
    assert "Linear(784 -> 100)" in msg and "(2, 783)" in msg and "(N, 784)" in msg


def test_linear_wrong_ndim_suggests_flatten(backend):
    layer = xpnet.Linear(12, 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*Flatten"):
        layer(dev(np.zeros((2, 3, 4), dtype=np.float32)))


def test_non_floating_input_is_refused(backend):
    layer = xpnet.Linear(3, 2)
    with pytest.raises(TypeError, match="int64.*floating"):
        layer(dev(np.zeros((2, 3), dtype=np.int64)))


def test_input_dtype_must_match_parameters(backend):
    layer = xpnet.Linear(3, 2, dtype="float64")
    with pytest.raises(TypeError, match="float32.*float64"):
        layer(dev(np.zeros((2, 3), dtype=np.float32)))


def test_host_list_input_is_refused(backend):
    with pytest.raises(TypeError, match="to_device"):
        xpnet.Linear(3, 2)([[0.0, 1.0, 2.0]])


@pytest.mark.parametrize("make,match", [
    (lambda: xpnet.Linear(0, 3), "in_features.*0"),
    (lambda: xpnet.Linear(3, -2), "out_features.*-2"),
    (lambda: xpnet.Linear(2.5, 3), "in_features.*2.5"),
    (lambda: xpnet.Linear(True, 3), "in_features"),
    (lambda: xpnet.BatchNorm(0), "num_features.*0"),
    (lambda: xpnet.BatchNorm(3, momentum=1.5), "momentum.*1.5"),
    (lambda: xpnet.BatchNorm(3, eps=0.0), "eps"),
    (lambda: xpnet.LeakyReLU(-0.1), "slope.*-0.1"),
    (lambda: xpnet.Dropout(1.0), r"Dropout: p must be a number in \[0, 1\), got 1.0"),
    (lambda: xpnet.Dropout(-0.1), r"Dropout: p must be a number in \[0, 1\), got -0.1"),
    (lambda: xpnet.Dropout(1.5), "p must be"),
], ids=["linear-in-0", "linear-out-neg", "linear-float", "linear-bool", "bn-0",
        "bn-momentum", "bn-eps", "leaky-slope", "dropout-1", "dropout-neg", "dropout-1.5"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_sequential_refuses_non_modules():
    with pytest.raises(TypeError, match="item 1 is str"):
        xpnet.Sequential(xpnet.ReLU(), "relu")


def test_batchnorm_wrong_channels_names_both_shapes(backend):
    bn = xpnet.BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm\(3.*\(4, 5\).*\(N, 3\)"):
        bn(dev(np.zeros((4, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"\(4, 3, 2\)"):
        bn(dev(np.zeros((4, 3, 2), dtype=np.float32)))


def test_batchnorm_training_needs_more_than_one_value(backend):
    with pytest.raises(ValueError, match="more than one value"):
        xpnet.BatchNorm(3)(dev(np.zeros((1, 3), dtype=np.float32)))


def test_flatten_needs_a_batch_axis(backend):
    with pytest.raises(ValueError, match=r"Flatten.*\(5,\)"):
        xpnet.Flatten()(dev(np.zeros(5)))
