"""Weight initialisers (xpnet/init.py): reproducible on every backend, correct statistics."""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
from conftest import to_np, use_backend

import xpnet
from xpnet import init

SPECS = ["he", "he_normal", "he_uniform", "xavier", "xavier_normal", "glorot",
         "xavier_uniform", 0.05]


def _layers(spec, seed):
    rng = xpnet.Generator(seed)
    return [xpnet.Linear(5, 7, init=spec, rng=rng),
            xpnet.Conv2d(2, 3, 3, init=spec, rng=rng),
            xpnet.Linear(4, 2, init=spec, rng=rng, dtype="float64")]


@pytest.mark.parametrize("spec", SPECS, ids=[str(s) for s in SPECS])
def test_same_seed_gives_the_numpy_weights_on_every_backend(backend, spec):
    with use_backend("numpy"):
        reference = [layer.state_dict() for layer in _layers(spec, seed=42)]
    layers = _layers(spec, seed=42)
    for layer, ref in zip(layers, reference):
        for name, p in layer.parameters().items():
            assert array_api_compat.device(p.data) == backend.device
            assert to_np(p.data).dtype == ref[name].dtype
            np.testing.assert_array_equal(to_np(p.data), ref[name], err_msg=f"{layer} {name}")


def test_different_seeds_give_different_weights(backend):
    a = to_np(xpnet.Linear(5, 7, rng=xpnet.Generator(1)).W.data)
    b = to_np(xpnet.Linear(5, 7, rng=xpnet.Generator(2)).W.data)
    assert not np.array_equal(a, b)


def test_biases_start_at_zero(backend):
    layer = xpnet.Conv2d(2, 3, 3)
    np.testing.assert_array_equal(to_np(layer.b.data), np.zeros(3, dtype=np.float32))


def test_init_array_dtype_and_device(backend):
    a = init.init_array("he", xpnet.Generator(0), (3, 4), 3, 4, dtype="float64")
    assert a.dtype == backend.xp.float64
    assert array_api_compat.device(a) == backend.device
    assert init.init_array("he", xpnet.Generator(0), (3, 4), 3, 4).dtype == backend.xp.float32


# (spec, fan_in, fan_out, expected std, uniform bound or None)
STATS = [
    ("he", 200, 50, math.sqrt(2 / 200), None),
    ("he_uniform", 200, 50, math.sqrt(6 / 200) / math.sqrt(3), math.sqrt(6 / 200)),
    ("xavier", 300, 100, math.sqrt(2 / 400), None),
    ("xavier_uniform", 300, 100, math.sqrt(6 / 400) / math.sqrt(3), math.sqrt(6 / 400)),
    (0.02, 10, 10, 0.02, None),
]


@pytest.mark.parametrize("spec,fan_in,fan_out,std,bound", STATS,
                         ids=[str(s[0]) for s in STATS])
def test_initialiser_statistics_on_a_big_draw(backend, spec, fan_in, fan_out, std, bound):
    a = to_np(init.init_array(spec, xpnet.Generator(7), (400, 500), fan_in, fan_out,
                              dtype="float64"))
    # 200000 draws: relative std error of the std is about 0.0016; 2% is over 10 sigma
    assert a.std() == pytest.approx(std, rel=0.02)
    assert abs(a.mean()) < 0.01 * std
    if bound is not None:
        assert a.min() >= -bound and a.max() < bound
        assert a.min() < -0.99 * bound and a.max() > 0.99 * bound


def test_layers_use_their_fans(backend):
    conv = to_np(xpnet.Conv2d(8, 64, 5, rng=xpnet.Generator(3)).W.data)  # fan_in = 8 * 25
    assert conv.std() == pytest.approx(math.sqrt(2 / 200), rel=0.03)
    lin = to_np(xpnet.Linear(500, 400, init="xavier", rng=xpnet.Generator(3)).W.data)
    assert lin.std() == pytest.approx(math.sqrt(2 / 900), rel=0.03)


def test_callable_initialiser(backend):
    def ones(rng, shape, fan_in, fan_out):
        return np.full(shape, fan_in + fan_out / 10)

    layer = xpnet.Linear(3, 2, init=ones)
    np.testing.assert_array_equal(to_np(layer.W.data), np.full((3, 2), 3.2, dtype=np.float32))


@pytest.mark.parametrize("spec,error,match", [
    ("kaiming", ValueError, r"unknown initialiser 'kaiming'.*'he'.*'xavier_uniform'"),
    (0.0, ValueError, "std.*0.0"),
    (-0.1, ValueError, "std.*-0.1"),
    (None, TypeError, "None"),
    (True, TypeError, "True"),
    ([0.1], TypeError, r"\[0.1\]"),
    (lambda rng, shape, **kw: np.zeros((1, 1)), ValueError, r"\(1, 1\).*\(3, 2\)"),
], ids=["unknown-name", "zero-std", "negative-std", "none", "bool", "list", "wrong-shape"])
def test_bad_init_spec(spec, error, match):
    with pytest.raises(error, match=match):
        init.init_array(spec, xpnet.Generator(0), (3, 2), 3, 2, dtype="float64")


def test_bad_init_spec_through_a_layer(backend):
    with pytest.raises(ValueError, match="unknown initialiser"):
        xpnet.Conv2d(1, 2, 3, init="orthogonal")
