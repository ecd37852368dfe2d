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
    """SimpleConvNet runs fused conv+pool, then ReLU; outputs and gradients equal the book's
    conv-ReLU-pool."""
    fast = SimpleConvNet(input_shape=(1, 12, 12), filters=3, hidden_size=5, seed=1,
                         dtype="float64")
    fused = fast.layers[0]
    conv = xpnet.Conv2d(1, 3, 5, dtype="float64")
    conv.W, conv.b = fused.W, fused.b
    book = xpnet.Sequential(conv, xpnet.ReLU(), xpnet.MaxPool2d(2), *fast.layers[2:])
    x = xpnet.to_device(np.random.default_rng(0).standard_normal((4, 1, 12, 12)))
    d = xpnet.to_device(np.random.default_rng(1).standard_normal((4, 10)))
    close = {"rtol": 1e-12, "atol": 1e-14}  # equal up to the order of float64 sums
    np.testing.assert_allclose(to_np(fast(x)), to_np(book(x)), **close)
    dx_fast = to_np(fast.backward(d))
    grads_fast = {k: to_np(p.grad) for k, p in fast.parameters().items()}
    book(x)
    np.testing.assert_allclose(dx_fast, to_np(book.backward(d)), **close)
    for k, p in fast.parameters().items():  # the same Parameter objects
        np.testing.assert_allclose(grads_fast[k], to_np(p.grad), err_msg=k, **close)
