"""Property-based tests (hypothesis): layer shapes, strides and paddings against loop
references, and checkpoint save/load round trips.

Example counts are small (``max_examples``) so the suite stays fast on every CPU backend; the
loop references are deliberately the plainest possible code.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import out_size, ref_conv, ref_maxpool_backward, ref_pool  # loop references

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import xpnet  # noqa: E402
from xpnet.io.checkpoint import META_SCHEMA, load_checkpoint, save_checkpoint  # noqa: E402

# the backend fixture is per test, not per example: the selected backend does not change
# between examples, which is what the health check warns about
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_case(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, 2))
    h = draw(st.integers(1, 8))
    w = draw(st.integers(1, 8))
    assume(h + 2 * p >= k and w + 2 * p >= k)
    n, c, f = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 16))
    return n, c, f, h, w, k, s, p, seed


@st.composite
def pool_case(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 4))
    p = draw(st.integers(0, k // 2))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    assume(h + 2 * p >= k and w + 2 * p >= k)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 16))
    return n, c, h, w, k, s, p, seed


@SETTINGS
@given(case=conv_case())
def test_conv2d_matches_the_loop_reference(backend, case):
    n, c, f, h, w, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, k, k)), \
        rng.standard_normal(f)
    conv = xpnet.Conv2d(c, f, k, stride=s, padding=p, dtype="float64")
    conv.W.data, conv.b.data = dev(wt), dev(b)
    out = to_np(conv(dev(x)))
    assert out.shape == (n, f, out_size(h, k, s, p), out_size(w, k, s, p))
    np.testing.assert_allclose(out, ref_conv(x, wt, b, s, p), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(case=pool_case(), kind=st.sampled_from(["max", "avg"]))
def test_pooling_matches_the_loop_reference(backend, case, kind):
    n, c, h, w, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    layer = (xpnet.MaxPool2d if kind == "max" else xpnet.AvgPool2d)(k, s, p)
    out = to_np(layer(dev(x)))
    assert out.shape == (n, c, out_size(h, k, s, p), out_size(w, k, s, p))
    np.testing.assert_allclose(out, ref_pool(x, k, s, p, kind), rtol=1e-12, atol=1e-12)
    if kind == "max":
        dout = rng.standard_normal(out.shape)
        dx = to_np(layer.backward(dev(dout)))
        np.testing.assert_allclose(dx, ref_maxpool_backward(x, dout, k, s, p),
                                   rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- checkpoints
_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12)
_DTYPES = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8])


_FLOATS = st.sampled_from([np.float32, np.float64])  # optimizer slots: floats only


@st.composite
def arrays(draw, dtypes=_DTYPES):
    dtype = np.dtype(draw(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    elements = None
    if dtype.kind == "f":  # NaN and infinities included: a diverged state is saved too
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
    return draw(hnp.arrays(dtype, shape, elements=elements))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 53, 2 ** 53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)


@settings(max_examples=40, deadline=None)
@given(model=st.dictionaries(_NAMES, arrays(), max_size=5),
       slots=st.dictionaries(_NAMES, st.dictionaries(st.sampled_from(["m", "v", "h"]),
                                                     arrays(_FLOATS), max_size=2), max_size=3),
       meta=st.dictionaries(st.text(min_size=1, max_size=8).filter(
           lambda k: k not in META_SCHEMA), _JSON, max_size=4),
       with_optimizer=st.booleans())
def test_checkpoint_round_trip(model, slots, meta, with_optimizer):
    optim = {"t": 3, "lr": 0.5, "state": slots} if with_optimizer else None
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(Path(d) / "ck.npz", model, optim, meta)
        ck = load_checkpoint(path)
        assert sorted(p.name for p in Path(d).iterdir()) == ["ck.npz"]  # no temp file left
    assert set(ck.model) == set(model)
    for k, v in model.items():
        assert ck.model[k].dtype == v.dtype and ck.model[k].shape == v.shape
        np.testing.assert_array_equal(ck.model[k], v)  # NaN == NaN here
    for k, v in meta.items():
        assert json.dumps(ck.meta[k], sort_keys=True) == json.dumps(v, sort_keys=True)
    if with_optimizer:
        assert ck.optimizer["t"] == 3 and ck.optimizer["lr"] == 0.5
        assert set(ck.optimizer["state"]) == set(slots)
        for pname, s in slots.items():
            assert set(ck.optimizer["state"][pname]) == set(s)
            for slot, v in s.items():
                np.testing.assert_array_equal(ck.optimizer["state"][pname][slot], v)
    else:
        assert ck.optimizer is None
