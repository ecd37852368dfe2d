"""Linear (xpnet/layers/linear.py), and the named input errors every layer shares."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import gradcheck, rand

import xpnet


def test_linear_gradcheck(backend):
    layer = xpnet.Linear(4, 3, dtype="float64", rng=xpnet.Generator(1))
    layer.b.data = dev(rand(3, seed=9))  # a non-zero bias
    gradcheck(layer, rand((5, 4)), {"x", "W", "b"})


def test_linear_without_bias_gradcheck(backend):
    layer = xpnet.Linear(4, 3, bias=False, dtype="float64")
    assert layer.b is None and set(layer.parameters()) == {"W"}
    gradcheck(layer, rand((2, 4)), {"x", "W"})


def test_linear_forward_matches_numpy(backend):
    layer = xpnet.Linear(4, 3, dtype="float64", rng=xpnet.Generator(2))
    layer.b.data = dev(rand(3, seed=1))
    x = rand((5, 4))
    expected = x @ to_np(layer.W.data) + to_np(layer.b.data)
    np.testing.assert_allclose(to_np(layer(dev(x))), expected, rtol=1e-12)


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
], ids=["linear-in-0", "linear-out-neg", "linear-float", "linear-bool"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
