"""Backend selection, device transfers and mixed-device errors (xpnet/backend/)."""

from __future__ import annotations

import sys
import types

import array_api_compat
import numpy as np
import pytest
from conftest import (
    OTHER_BACKEND_PARAMS,
    STRICT_DEVICE,
    cuda_usable,
    require_backend,
    to_np,
    use_backend,
)

import xpnet
from xpnet import backend as backend_module
from xpnet.backend.hints import install_command

EXPECTED_NAMESPACE = {
    "numpy": "array_api_compat.numpy",
    "torch": "array_api_compat.torch",
    "cupy": "array_api_compat.cupy",
    "array_api_strict": "array_api_strict",
}


def _library_version(name: str) -> str:
    return __import__(name).__version__


# ----------------------------------------------------------------------------- reporting
def test_backend_reports_name_namespace_device_version(backend):
    assert backend.name in EXPECTED_NAMESPACE
    assert backend.xp.__name__ == EXPECTED_NAMESPACE[backend.name]
    assert backend.version == _library_version(backend.name)
    assert backend.name in str(backend) and backend.version in str(backend)
    x = xpnet.to_device(np.ones(3))
    assert array_api_compat.device(x) == backend.device
    assert array_api_compat.array_namespace(x) is backend.xp


def test_current_returns_the_selection(backend):
    assert xpnet.current() is backend


def test_default_device_is_the_cpu(backend):
    if backend.name == "cupy":
        assert backend.device.id == 0
    elif backend.name == "array_api_strict":  # XPNET_TEST_DEVICE moves it on purpose
        assert backend.device == backend.xp.Device(STRICT_DEVICE or "CPU_DEVICE")
    else:
        assert str(backend.device) == "cpu"


def test_set_backend_normalises_the_name(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("array_api_strict")
    with use_backend(" Array-API-Strict ") as b:
        assert b.name == "array_api_strict"


def test_unknown_backend_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'") as info:
        xpnet.set_backend("tensorflow")
    for name in ("auto", "numpy", "cupy", "torch", "array_api_strict"):
        assert name in str(info.value)


def test_failed_selection_keeps_the_previous_backend():
    with use_backend("numpy") as b:
        with pytest.raises(ValueError):
            xpnet.set_backend("no_such_backend")
        assert xpnet.current() is b


def test_numpy_refuses_a_gpu_device():
    with pytest.raises(ValueError, match="cuda:0"):
        xpnet.set_backend("numpy", device="cuda:0")


# ----------------------------------------------------------------------------- cupy errors
def test_cupy_without_gpu_raises_backend_error_with_install_hint():
    if cuda_usable():
        pytest.skip("a CUDA device is usable here; the cupy backend works")
    with pytest.raises(xpnet.BackendError) as info:
        xpnet.set_backend("cupy")
    msg = str(info.value)
    if "CuPy is not installed" in msg:
        assert install_command("cupy12") in msg
    else:  # CuPy without a driver or GPU: said plainly, no reinstall suggested
        assert "no NVIDIA driver/GPU on this machine" in msg and "pip install" not in msg


def test_cupy_installed_but_no_device_says_so(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.__version__ = "13.0.0-fake"
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=no_device, driverGetVersion=lambda: 12040))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(xpnet.BackendError) as info:
        xpnet.set_backend("cupy")
    msg = str(info.value)
    assert "no NVIDIA driver/GPU on this machine" in msg and "13.0.0-fake is installed" in msg
    assert "cudaErrorNoDevice" in msg
    assert "pip install" not in msg  # installing again would not help


def test_available_backends_reports_every_backend():
    report = xpnet.available_backends()
    assert set(report) == {"numpy", "cupy", "torch", "array_api_strict"}
    assert report["numpy"] == np.__version__
    if not cuda_usable():
        assert report["cupy"].startswith("unavailable:")


# ----------------------------------------------------------------------------- environment
@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch"])
def test_env_var_is_read_when_name_is_none(monkeypatch, name):
    require_backend(name)
    monkeypatch.setenv("XPNET_BACKEND", name)
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    with use_backend(None) as b:
        assert b.name == name


def test_current_selects_from_env_on_first_use(monkeypatch):
    monkeypatch.setenv("XPNET_BACKEND", "numpy")
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    monkeypatch.setattr(backend_module.selection, "_current", None)
    assert xpnet.current().name == "numpy"


def test_bad_env_var_names_the_variable(monkeypatch):
    monkeypatch.setenv("XPNET_BACKEND", "jax")
    with pytest.raises(ValueError, match="XPNET_BACKEND"):
        xpnet.set_backend()


def test_auto_picks_cupy_only_with_a_usable_gpu(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    with use_backend("auto") as b:
        assert b.name == ("cupy" if cuda_usable() else "numpy")
    monkeypatch.delenv("XPNET_BACKEND", raising=False)
    with use_backend(None) as b:  # the default is auto
        assert b.name == ("cupy" if cuda_usable() else "numpy")


# ----------------------------------------------------------------------------- transfers
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "uint8", "bool"])
def test_to_device_to_numpy_round_trip_keeps_values_and_dtype(backend, dtype):
    host = (np.random.default_rng(1).standard_normal((3, 4)) * 50).astype(dtype)
    x = xpnet.to_device(host)
    assert x.dtype == getattr(backend.xp, dtype)
    assert array_api_compat.device(x) == backend.device
    back = to_np(x)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host)


def test_to_device_python_floats_become_float32(backend):
    xp = backend.xp
    assert xpnet.to_device(1.5).dtype == xp.float32
    x = xpnet.to_device([0.5, 1.25, -2.0])
    assert x.dtype == xp.float32
    np.testing.assert_array_equal(to_np(x), np.array([0.5, 1.25, -2.0], dtype=np.float32))


def test_to_device_casts_to_a_named_or_namespace_dtype(backend):
    xp = backend.xp
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert xpnet.to_device(host, dtype="float32").dtype == xp.float32
    x64 = xpnet.to_device(host, dtype=xp.float64)
    assert x64.dtype == xp.float64
    x32 = xpnet.to_device(x64, dtype="float32")  # an array already on the backend
    assert x32.dtype == xp.float32
    np.testing.assert_array_equal(to_np(x32), host.astype(np.float32))


def test_to_device_returns_backend_arrays_unchanged(backend):
    x = xpnet.to_device(np.ones((2, 2), dtype=np.float32))
    assert xpnet.to_device(x) is x
    assert xpnet.to_device(x, dtype=x.dtype) is x


def test_to_numpy_of_scalars_and_lists():
    np.testing.assert_array_equal(xpnet.to_numpy([1.0, 2.0]), np.array([1.0, 2.0]))
    assert xpnet.to_numpy(3.0).shape == ()


# ----------------------------------------------------------------------------- mixing
def test_mixed_strict_devices_raise_naming_both(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("array_api_strict")
    import array_api_strict as strict

    with use_backend("array_api_strict"):
        layer = xpnet.Linear(3, 2, dtype="float64")
        x = strict.asarray(np.ones((2, 3)), device=strict.Device("device1"))
        with pytest.raises(xpnet.DeviceMismatchError) as info:
            layer(x)
    msg = str(info.value)
    assert "device1" in msg and "CPU_DEVICE" in msg
    assert "Linear(3 -> 2)" in msg


def test_mixed_namespaces_raise_naming_both(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("torch")
    with use_backend("torch"):
        layer = xpnet.Linear(3, 2, dtype="float64")
        with pytest.raises(xpnet.DeviceMismatchError) as info:
            layer(np.ones((2, 3)))
    msg = str(info.value)
    assert "numpy" in msg and "torch" in msg
    assert msg.index("numpy") < msg.index("torch")


def test_device_mismatch_is_a_value_error():
    assert issubclass(xpnet.DeviceMismatchError, ValueError)
    assert issubclass(xpnet.BackendError, RuntimeError)


def test_check_same_device_accepts_matching_arrays(backend):
    a = xpnet.to_device(np.ones(2))
    b = xpnet.to_device(np.zeros(3))
    backend_module.check_same_device(a, b, "a", "b")  # no error


def test_same_device_agrees_with_array_api_compat_device():
    """The fast ``.device`` comparison answers as array-api-compat's device() would, for
    arrays of one type on one or two devices, arrays of two types, and arrays that carry no
    ``.device`` attribute (NumPy 1.x)."""
    strict = pytest.importorskip("array_api_strict")
    cpu, other = strict.Device("CPU_DEVICE"), strict.Device("device1")
    arrays = [np.ones(2), np.zeros(3), strict.ones(2, device=cpu), strict.ones(2, device=other),
              strict.zeros(1, device=other)]
    try:
        import torch
        arrays += [torch.ones(2), torch.zeros(1)]
    except ImportError:
        pass

    class NoDeviceAttribute(np.ndarray):  # a NumPy 1.x array: no .device
        device = None

    arrays.append(np.ones(2).view(NoDeviceAttribute))
    for a in arrays:
        for b in arrays:
            expected = type(a) is type(b) and (
                array_api_compat.device(a) == array_api_compat.device(b))
            assert backend_module.same_device(a, b) == expected, (a, b)
    assert not backend_module.same_device(arrays[2], arrays[3])  # CPU_DEVICE vs device1


@pytest.mark.parametrize("target", OTHER_BACKEND_PARAMS)
def test_module_to_device_moves_a_model(monkeypatch, target):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend(target)
    with use_backend("numpy"):
        model = xpnet.Sequential(xpnet.Linear(3, 4, dtype="float64"),
                                 xpnet.BatchNorm(4, dtype="float64"), xpnet.ReLU())
        x_host = np.random.default_rng(0).standard_normal((5, 3))
        expected = to_np(model(x_host))
        before = model.state_dict()
    with use_backend(target) as b:
        assert model.to_device() is model
        for name, p in model.parameters().items():
            assert array_api_compat.array_namespace(p.data) is b.xp, name
            assert array_api_compat.device(p.data) == b.device
            assert p.data.dtype == b.xp.float64
            np.testing.assert_array_equal(to_np(p.data), before[name])
        for name, buf in model.buffers().items():
            assert array_api_compat.array_namespace(buf) is b.xp, name
        out = model(xpnet.to_device(x_host))
        assert array_api_compat.array_namespace(out) is b.xp
        np.testing.assert_allclose(to_np(out), expected, rtol=1e-12, atol=1e-12)


def test_module_to_device_onto_a_second_strict_device(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("array_api_strict")
    import array_api_strict as strict

    with use_backend("array_api_strict"):
        model = xpnet.Linear(3, 2, dtype="float64")
        x_cpu = xpnet.to_device(np.ones((1, 3)))
    with use_backend("array_api_strict", device="device1") as b:
        assert b.device == strict.Device("device1")
        model.to_device()
        assert model.W.data.device == strict.Device("device1")
        out = model(xpnet.to_device(np.ones((1, 3))))
        assert out.device == strict.Device("device1")
        with pytest.raises(xpnet.DeviceMismatchError):
            model(x_cpu)
        np.testing.assert_allclose(to_np(out), to_np(xpnet.to_device(np.ones((1, 3)))) @
                                   to_np(model.W.data) + to_np(model.b.data))
