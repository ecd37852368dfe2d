"""Random numbers (xpnet/rng.py): seeded generators, reproducible streams, exact resumption,
and device draws (each device kernel against the host fallback)."""

from __future__ import annotations

import json

import array_api_compat
import numpy as np
import pytest
from conftest import dev, fallback, fast_paths, to_np

import xpnet
from xpnet.rng import device_uniform


def _draw_everything(g, xp, device):
    return [g.normal((3, 2), std=2.0), g.uniform_host((4,), -1.0, 1.0), g.permutation(10),
            to_np(g.uniform((5, 3), xp=xp, device=device)), to_np(g.uniform((2,)))]


def test_same_seed_same_streams(backend):
    a = _draw_everything(xpnet.Generator(3), backend.xp, backend.device)
    b = _draw_everything(xpnet.Generator(3), backend.xp, backend.device)
    c = _draw_everything(xpnet.Generator(4), backend.xp, backend.device)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)


def test_get_and_set_state_resume_the_exact_stream(backend):
    g = xpnet.Generator(11)
    g.normal((7,))
    g.uniform((3,))
    state = g.get_state()
    first = _draw_everything(g, backend.xp, backend.device)
    g.set_state(state)
    again = _draw_everything(g, backend.xp, backend.device)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_state_survives_json_and_moves_to_a_new_generator(backend):
    g = xpnet.Generator(5)
    g.uniform((4,))
    state = json.loads(json.dumps(g.get_state()))
    expected = _draw_everything(g, backend.xp, backend.device)
    other = xpnet.Generator(99)
    other.set_state(state)
    for x, y in zip(expected, _draw_everything(other, backend.xp, backend.device)):
        np.testing.assert_array_equal(x, y)


def test_device_uniform_defaults(backend):
    u = xpnet.Generator(0).uniform((6, 7))
    assert u.dtype == backend.xp.float32
    assert tuple(u.shape) == (6, 7)
    assert array_api_compat.device(u) == backend.device
    host = to_np(u)
    assert host.min() >= 0.0 and host.max() < 1.0
    u64 = xpnet.Generator(0).uniform((3,), backend.xp.float64)
    assert u64.dtype == backend.xp.float64


def test_consecutive_device_draws_differ(backend):
    g = xpnet.Generator(0)
    assert not np.array_equal(to_np(g.uniform((20,))), to_np(g.uniform((20,))))


def test_host_draws_match_numpy_default_rng():
    g = xpnet.Generator(21)
    ref = np.random.default_rng(21)
    np.testing.assert_array_equal(g.normal((3,), std=0.5), ref.standard_normal((3,)) * 0.5)
    np.testing.assert_array_equal(g.uniform_host((3,), 2.0, 4.0), ref.uniform(2.0, 4.0, size=3))
    np.testing.assert_array_equal(g.permutation(6), ref.permutation(6))


def test_unseeded_generators_differ():
    assert not np.array_equal(xpnet.Generator(None).normal((8,)),
                              xpnet.Generator(None).normal((8,)))


def test_dropout_mask_resumes_with_the_generator_state(backend):
    layer = xpnet.Dropout(0.5, rng=xpnet.Generator(8))
    x = dev(np.ones((6, 6)))
    layer(x)
    state = layer.rng.get_state()
    a = to_np(layer(x))
    layer.rng.set_state(state)
    np.testing.assert_array_equal(to_np(layer(x)), a)


# ---------------------------------------------------------------------- device_uniform
@pytest.mark.parametrize("generic", [False, True], ids=["fast", "generic"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_uniform_is_reproducible_in_range_with_dtype_and_device(backend, generic, dtype):
    xp = backend.xp
    shape = (50, 40)

    def draw(seed):
        with fast_paths(not generic):
            return device_uniform(seed, shape, getattr(xp, dtype), xp=xp,
                                  device=backend.device)

    a, b, c = draw(123), draw(123), draw(124)
    assert tuple(a.shape) == shape
    assert a.dtype == getattr(xp, dtype)
    assert array_api_compat.device(a) == backend.device
    a_np, b_np, c_np = to_np(a), to_np(b), to_np(c)
    np.testing.assert_array_equal(a_np, b_np)
    assert not np.array_equal(a_np, c_np)
    assert a_np.min() >= 0.0 and a_np.max() < 1.0
    assert abs(a_np.mean() - 0.5) < 0.03  # 2000 draws: std of the mean is about 0.0065
    assert len(np.unique(a_np)) > 0.99 * a_np.size


def test_device_uniform_fallback_draws_on_the_host_with_numpy(backend):
    xp = backend.xp
    u = fallback(device_uniform, 7, (3, 4), xp.float32, xp=xp, device=backend.device)
    expected = np.random.default_rng(7).random((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(to_np(u), expected)
