"""Dropout (xpnet/layers/dropout.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import gradcheck, rand

import xpnet


def test_dropout_gradcheck_with_a_fixed_mask(backend):
    layer = xpnet.Dropout(0.4)

    def reseed():
        layer.rng = xpnet.Generator(11)

    results = gradcheck(layer, rand((6, 5)), {"x"}, before_forward=reseed)
    analytic = results["x"][0]
    assert np.any(analytic == 0.0) and np.any(analytic != 0.0)  # some units really dropped


def test_dropout_eval_is_identity(backend):
    layer = xpnet.Dropout(0.5).eval()
    x = dev(rand((4, 6)))
    y = layer(x)
    np.testing.assert_array_equal(to_np(y), to_np(x))
    dout = dev(rand((4, 6), seed=1))
    np.testing.assert_array_equal(to_np(layer.backward(dout)), to_np(dout))


def test_dropout_p_zero_is_identity_in_training(backend):
    x = dev(rand((4, 6)))
    np.testing.assert_array_equal(to_np(xpnet.Dropout(0.0)(x)), to_np(x))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_train_zero_fraction_and_scaling(backend, p):
    x_host = 1.0 + np.abs(rand((100, 200)))  # no zeros in the input
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
    x = dev(rand((8, 9)))
    a = to_np(xpnet.Dropout(0.5, rng=xpnet.Generator(3))(x))
    b = to_np(xpnet.Dropout(0.5, rng=xpnet.Generator(3))(x))
    c = to_np(xpnet.Dropout(0.5, rng=xpnet.Generator(4))(x))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a == 0, c == 0)


def test_dropout_draws_a_new_mask_each_call(backend):
    layer = xpnet.Dropout(0.5, rng=xpnet.Generator(3))
    x = dev(np.ones((8, 9)))
    assert not np.array_equal(to_np(layer(x)), to_np(layer(x)))


@pytest.mark.parametrize("make,match", [
    (lambda: xpnet.Dropout(1.0), r"Dropout: p must be a number in \[0, 1\), got 1.0"),
    (lambda: xpnet.Dropout(-0.1), r"Dropout: p must be a number in \[0, 1\), got -0.1"),
    (lambda: xpnet.Dropout(1.5), "p must be"),
], ids=["dropout-1", "dropout-neg", "dropout-1.5"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
