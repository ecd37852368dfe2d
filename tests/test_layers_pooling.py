"""MaxPool2d, AvgPool2d and GlobalAvgPool2d (xpnet/layers/pooling.py): gradient checks, loop
references, ties, padding."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_gradients_close, dev, to_np
from layer_refs import X_SHAPE, distinct, gradcheck, out_size, rand, ref_maxpool_backward, ref_pool

import xpnet
from xpnet.gradcheck import check_module


def test_global_avg_pool_gradcheck_and_values(backend):
    gradcheck(xpnet.GlobalAvgPool2d(), rand((2, 3, 4, 5)), {"x"})
    x = rand((2, 3, 4, 5))
    np.testing.assert_allclose(to_np(xpnet.GlobalAvgPool2d()(dev(x))), x.mean(axis=(2, 3)),
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d\(\): input x has shape \(2, 3\)"):
        xpnet.GlobalAvgPool2d()(dev(np.zeros((2, 3))))


POOL_CASES = [
    pytest.param(2, 2, 0, id="k2s2p0"),
    pytest.param(2, 1, 0, id="k2s1p0-overlap"),
    pytest.param(3, 2, 1, id="k3s2p1-overlap"),
    pytest.param(3, 1, 1, id="k3s1p1-overlap"),
    pytest.param(3, 3, 0, id="k3s3p0"),
]


@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_maxpool2d_gradcheck(backend, k, s, p):
    results = check_module(xpnet.MaxPool2d(k, stride=s, padding=p), dev(distinct(X_SHAPE)))
    assert_gradients_close(results, {"x"})


@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_avgpool2d_gradcheck(backend, k, s, p):
    results = check_module(xpnet.AvgPool2d(k, stride=s, padding=p), dev(rand(X_SHAPE)))
    assert_gradients_close(results, {"x"})


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_pool_forward_matches_loop_reference(backend, k, s, p, kind):
    layer = (xpnet.MaxPool2d if kind == "max" else xpnet.AvgPool2d)(k, stride=s, padding=p)
    x = rand(X_SHAPE)
    y = layer(dev(x))
    expected = ref_pool(x, k, s, p, kind)
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_maxpool2d_ties_send_the_gradient_to_the_first_maximum(backend, k, s, p):
    x = np.random.default_rng(3).integers(0, 2, X_SHAPE).astype(np.float64)  # many ties
    dout = rand((2, 2, out_size(5, k, s, p), out_size(6, k, s, p)), seed=4)
    layer = xpnet.MaxPool2d(k, stride=s, padding=p)
    layer(dev(x))
    dx = to_np(layer.backward(dev(dout)))
    np.testing.assert_allclose(dx, ref_maxpool_backward(x, dout, k, s, p), rtol=1e-12,
                               atol=1e-14)


def test_pool_stride_defaults_to_kernel(backend):
    layer = xpnet.MaxPool2d(2)
    assert layer.stride == 2
    assert tuple(layer(dev(np.zeros((1, 1, 6, 6)))).shape) == (1, 1, 3, 3)


def test_avgpool_counts_padding_in_the_average(backend):
    y = to_np(xpnet.AvgPool2d(3, stride=1, padding=1)(dev(np.ones((1, 1, 3, 3)))))
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9) and y[0, 0, 1, 1] == pytest.approx(1.0)


def test_pool_refuses_integer_input(backend):
    with pytest.raises(TypeError, match="floating"):
        xpnet.MaxPool2d(2)(dev(np.zeros((1, 1, 4, 4), dtype=np.int32)))


@pytest.mark.parametrize("make,match", [
    (lambda: xpnet.MaxPool2d(0), "kernel_size.*0"),
    (lambda: xpnet.MaxPool2d(2, padding=-1), "padding.*-1"),
    (lambda: xpnet.MaxPool2d(2, padding=2), "at most"),
    (lambda: xpnet.AvgPool2d(2, stride=-1), "stride.*-1"),
], ids=["max-k0", "max-pad-neg", "max-pad-big", "avg-stride-neg"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
