"""Sequential and Flatten (xpnet/layers/container.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import assert_param_grads_without_input_grad, gradcheck, rand

import xpnet


def test_flatten_gradcheck(backend):
    gradcheck(xpnet.Flatten(), rand((2, 3, 2, 2)), {"x"})


def test_sequential_gradcheck(backend):
    rng = xpnet.Generator(3)
    model = xpnet.Sequential(
        xpnet.Linear(4, 5, dtype="float64", rng=rng), xpnet.Tanh(),
        xpnet.BatchNorm(5, dtype="float64"), xpnet.Linear(5, 3, dtype="float64", rng=rng),
        xpnet.Sigmoid())
    gradcheck(model, rand((4, 4)),
               {"x", "0.W", "0.b", "2.gamma", "2.beta", "3.W", "3.b"})


def test_flatten_shapes(backend):
    layer = xpnet.Flatten()
    x = rand((2, 3, 4, 5))
    y = layer(dev(x))
    assert tuple(y.shape) == (2, 60)
    np.testing.assert_array_equal(to_np(y), x.reshape(2, 60))
    assert tuple(layer.backward(y).shape) == (2, 3, 4, 5)


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
    x, dout = dev(rand((5, 4))), dev(rand((5, 3), seed=1))
    dx = assert_param_grads_without_input_grad(model, x, dout, rtol=1e-14)
    assert tuple(dx.shape) == (5, 4)


def test_train_and_eval_propagate_to_children(backend):
    model = xpnet.Sequential(xpnet.Linear(2, 2), xpnet.Dropout(0.5), xpnet.BatchNorm(2))
    model.eval()
    assert not any(layer.training for layer in model.layers) and not model.training
    model.train()
    assert all(layer.training for layer in model.layers) and model.training


def test_sequential_refuses_non_modules():
    with pytest.raises(TypeError, match="item 1 is str"):
        xpnet.Sequential(xpnet.ReLU(), "relu")


def test_flatten_needs_a_batch_axis(backend):
    with pytest.raises(ValueError, match=r"Flatten.*\(5,\)"):
        xpnet.Flatten()(dev(np.zeros(5)))
