"""Module and Parameter (xpnet/module.py): names, state dicts, device moves, modes."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from conftest import dev, to_np, use_backend

import xpnet
from xpnet.module import StateDictError


def _model(dtype="float32", seed=0):
    rng = xpnet.Generator(seed)
    return xpnet.Sequential(xpnet.Linear(3, 4, dtype=dtype, rng=rng),
                            xpnet.Sequential(xpnet.BatchNorm(4, dtype=dtype), xpnet.ReLU()),
                            xpnet.Linear(4, 2, dtype=dtype, rng=rng))


def test_nested_names_are_stable_and_dotted(backend):
    model = _model()
    assert list(model.parameters()) == ["0.W", "0.b", "1.0.gamma", "1.0.beta", "2.W", "2.b"]
    assert list(model.buffers()) == ["1.0.running_mean", "1.0.running_var"]
    assert model.parameters()["1.0.gamma"] is model[1][0].gamma


def test_num_parameters_and_zero_grad(backend):
    model = _model()
    assert model.num_parameters() == 3 * 4 + 4 + 4 + 4 + 4 * 2 + 2
    model(dev(np.ones((5, 3), dtype=np.float32)))
    model.backward(dev(np.ones((5, 2), dtype=np.float32)))
    assert all(p.grad is not None for p in model.parameters().values())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters().values())


def test_parameter_shape_and_repr(backend):
    p = xpnet.Linear(3, 4).W
    assert p.shape == (3, 4)
    assert "shape=(3, 4)" in repr(p) and "float32" in repr(p)


def test_state_dict_is_a_host_copy(backend):
    model = _model("float64")
    state = model.state_dict()
    assert set(state) == set(model.parameters()) | set(model.buffers())
    assert all(isinstance(v, np.ndarray) for v in state.values())
    saved = {k: v.copy() for k, v in state.items()}
    for p in model.parameters().values():
        p.grad = p.data * 0.0 + 1.0
    xpnet.SGD(model, lr=0.1).step()  # in-place updates
    model(dev(np.random.default_rng(0).standard_normal((5, 3))))  # running stats move
    for k, v in saved.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)


def test_load_state_dict_round_trip_and_independence(backend):
    src = _model("float64", seed=1)
    src(dev(np.random.default_rng(0).standard_normal((5, 3))))
    state = src.state_dict()
    saved = {k: v.copy() for k, v in state.items()}
    dst = _model("float64", seed=2)
    for p in dst.parameters().values():
        p.grad = p.data
    dst.load_state_dict(state)
    assert all(p.grad is None for p in dst.parameters().values())
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    x = dev(np.random.default_rng(3).standard_normal((4, 3)))
    src.eval(), dst.eval()
    np.testing.assert_array_equal(to_np(dst(x)), to_np(src(x)))
    for p in dst.parameters().values():
        p.grad = p.data * 0.0 + 1.0
    xpnet.SGD(dst, lr=0.1).step()  # must not write into the caller's dict
    for k, v in saved.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)


def test_load_state_dict_casts_to_the_model_dtype(backend):
    state = _model("float64").state_dict()
    model = _model("float32", seed=5)
    model.load_state_dict(state)
    for k, p in model.parameters().items():
        assert p.data.dtype == backend.xp.float32, k
        np.testing.assert_allclose(to_np(p.data), state[k], rtol=1e-6)
    assert model[1][0].running_var.dtype == backend.xp.float32


def test_load_state_dict_saved_on_numpy(backend):
    with use_backend("numpy"):
        src = _model("float64", seed=1)
        state = src.state_dict()
        x_host = np.random.default_rng(3).standard_normal((4, 3))
        expected = to_np(src.eval()(xpnet.to_device(x_host)))
    dst = _model("float64", seed=9).eval()
    dst.load_state_dict(state)
    out = dst(xpnet.to_device(x_host))
    assert array_api_compat.device(out) == backend.device
    np.testing.assert_allclose(to_np(out), expected, rtol=1e-12, atol=1e-14)


def test_load_state_dict_errors_name_the_key(backend):
    model = _model()
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "2.b"}
    with pytest.raises(StateDictError, match=r"missing \['2.b'\]"):
        model.load_state_dict(missing)
    with pytest.raises(StateDictError, match=r"unexpected \['3.W'\]"):
        model.load_state_dict({**state, "3.W": np.zeros(2)})
    with pytest.raises(ValueError, match=r"'0.W'.*\(4, 3\).*\(3, 4\)"):
        model.load_state_dict({**state, "0.W": np.zeros((4, 3))})


def test_to_device_with_an_explicit_backend(backend):
    with use_backend("numpy") as numpy_backend:
        model = _model()
    assert xpnet.current() is backend
    model.to_device(backend)
    for p in model.parameters().values():
        assert array_api_compat.array_namespace(p.data) is backend.xp
        assert p.data.dtype == backend.xp.float32
    model.to_device(numpy_backend)
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters().values())


def test_check_state_dict_compares_dtypes_on_request_and_changes_nothing(backend):
    model = _model("float32")
    before = model.state_dict()
    state = _model("float64", seed=3).state_dict()
    model.check_state_dict(state)  # load_state_dict casts to the model's dtype
    with pytest.raises(StateDictError, match="parameter '0.W' was saved as float64, this "
                                             "model's is float32"):
        model.check_state_dict(state, dtypes=True)
    with pytest.raises(TypeError, match="must be a dict of arrays.*got list"):
        model.load_state_dict([])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
