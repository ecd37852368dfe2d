"""Models (xpnet/models.py): shapes, parameter counts, and pool-before-ReLU equivalence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_np

import xpnet
from xpnet.models import DeepConvNet, MultiLayerNet, SimpleConvNet, TwoLayerNet


def test_shapes_and_parameter_counts(backend):
    images = xpnet.to_device(np.zeros((2, 1, 28, 28), dtype=np.float32))
    flat = xpnet.to_device(np.zeros((2, 784), dtype=np.float32))
    assert tuple(SimpleConvNet()(images).shape) == (2, 10)
    assert SimpleConvNet().num_parameters() == 433_890  # as ../shared/bench's reference
    assert tuple(DeepConvNet().eval()(images).shape) == (2, 10)
    assert TwoLayerNet().num_parameters() == 79_510
    net = MultiLayerNet(784, [40, 20], 10, activation="sigmoid", batchnorm=True, dropout=0.1)
    assert tuple(net(flat).shape) == (2, 10)
    with pytest.raises(ValueError, match="activation"):
        MultiLayerNet(784, [10], 10, activation="gelu")


def test_pool_then_relu_equals_relu_then_pool(backend):
    """SimpleConvNet runs conv-pool-ReLU; outputs and gradients equal conv-ReLU-pool."""
    fast = SimpleConvNet(input_shape=(1, 12, 12), filters=3, hidden_size=5, seed=1,
                         dtype="float64")
    layers = fast.layers
    book = xpnet.Sequential(layers[0], xpnet.ReLU(), xpnet.MaxPool2d(2), *layers[3:])
    x = xpnet.to_device(np.random.default_rng(0).standard_normal((4, 1, 12, 12)))
    d = xpnet.to_device(np.random.default_rng(1).standard_normal((4, 10)))
    np.testing.assert_array_equal(to_np(fast(x)), to_np(book(x)))
    dx_fast = to_np(fast.backward(d))
    grads_fast = {k: to_np(p.grad) for k, p in fast.parameters().items()}
    book(x)
    np.testing.assert_array_equal(dx_fast, to_np(book.backward(d)))
    for k, p in fast.parameters().items():  # the same Parameter objects
        np.testing.assert_array_equal(grads_fast[k], to_np(p.grad), err_msg=k)
