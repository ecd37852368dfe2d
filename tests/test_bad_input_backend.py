"""Bad input to backend/device selection and transfers: the exception type, a message that names
the argument and what was given and expected, and the selection left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_backend, use_backend

import xpnet
from xpnet import backend as backend_module
from xpnet.backend.hints import install_command


@pytest.fixture(autouse=True)
def _numpy_selected(monkeypatch):
    monkeypatch.delenv("XPNET_BACKEND", raising=False)
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    with use_backend("numpy") as b:
        yield b


# (set_backend args, env, exception, fragments the message must hold, backend it needs)
SELECTION = [
    pytest.param((3,), {}, TypeError, ["name", "int 3", "numpy"], None, id="name-int"),
    pytest.param((None,), {"XPNET_BACKEND": "jax"}, ValueError,
                 ["'jax'", "XPNET_BACKEND", "expected one of", "array_api_strict"], None,
                 id="env-name-unknown"),
    pytest.param(("tensorflow",), {}, ValueError, ["'tensorflow'", "expected one of", "cupy"],
                 None, id="name-unknown"),
    pytest.param(("numpy", "cuda:0"), {}, ValueError, ["device", "'cuda:0'", "'cpu'"], None,
                 id="numpy-cuda"),
    pytest.param(("numpy",), {"XPNET_DEVICE": "gpu"}, ValueError,
                 ["device", "'gpu'", "XPNET_DEVICE", "'cpu'"], None, id="numpy-env-device"),
    pytest.param(("torch", "bogus"), {}, ValueError,
                 ["device", "'bogus'", "'cpu'", "'cuda:N'"], "torch", id="torch-bogus"),
    pytest.param(("torch",), {"XPNET_DEVICE": "bogus"}, ValueError,
                 ["device", "'bogus'", "XPNET_DEVICE", "'cuda:N'"], "torch",
                 id="torch-env-bogus"),
    pytest.param(("torch", "meta"), {}, ValueError, ["device", "'meta'", "'cpu'"], "torch",
                 id="torch-meta"),
    pytest.param(("torch", 1.5), {}, TypeError, ["device", "float", "'cpu'"], "torch",
                 id="torch-float-device"),
    pytest.param(("array_api_strict", "gpu"), {}, ValueError,
                 ["device", "'gpu'", "CPU_DEVICE", "device1"], "array_api_strict",
                 id="strict-unknown-device"),
    pytest.param(("array_api_strict",), {"XPNET_DEVICE": "cuda:0"}, ValueError,
                 ["'cuda:0'", "XPNET_DEVICE", "device1"], "array_api_strict",
                 id="strict-env-device"),
    pytest.param(("cupy", "cuda:x"), {}, ValueError, ["device", "'cuda:x'", "'cuda:N'"], None,
                 id="cupy-malformed-device"),
    pytest.param(("cupy", -1), {}, ValueError, ["device", "-1", "N >= 0"], None,
                 id="cupy-negative-device"),
    pytest.param(("cupy", True), {}, TypeError, ["device", "bool", "'cuda:N'"], None,
                 id="cupy-bool-device"),
]


@pytest.mark.parametrize(("args", "env", "exc", "fragments", "needs"), SELECTION)
def test_bad_selection(monkeypatch, _numpy_selected, args, env, exc, fragments, needs):
    if needs:
        require_backend(needs)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(exc) as info:
        xpnet.set_backend(*args)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert xpnet.current() is _numpy_selected


def test_cupy_without_gpu_is_backend_error_with_install_command(_numpy_selected):
    if backend_module.cuda_status()[0]:
        pytest.skip("a usable GPU is present")
    with pytest.raises(xpnet.BackendError) as info:
        xpnet.set_backend("cupy")
    msg = str(info.value)
    assert (install_command("cupy12") in msg if "not installed" in msg
            else "no NVIDIA driver/GPU on this machine" in msg)
    assert xpnet.current() is _numpy_selected


def test_auto_does_not_ignore_a_gpu_device(monkeypatch, _numpy_selected):
    if backend_module.cuda_status()[0]:
        pytest.skip("a usable GPU is present")
    monkeypatch.setenv("XPNET_DEVICE", "cuda:1")
    with pytest.raises(xpnet.BackendError) as info:
        xpnet.set_backend("auto")
    assert "'cuda:1'" in str(info.value) and "XPNET_DEVICE" in str(info.value)
    assert xpnet.current() is _numpy_selected
    monkeypatch.setenv("XPNET_DEVICE", "cpu")  # honoured: NumPy
    with use_backend("auto") as b:
        assert b.name == "numpy"


def test_torch_cuda_without_cuda_is_backend_error(_numpy_selected):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU")
    with pytest.raises(xpnet.BackendError, match=r"'cuda:0'.*no CUDA device"):
        xpnet.set_backend("torch", "cuda:0")
    assert xpnet.current() is _numpy_selected


# ----------------------------------------------------------------------- to_device / to_numpy
TRANSFERS = [
    pytest.param(lambda: xpnet.to_device(np.ones(2), dtype="float33"), ValueError,
                 ["dtype", "'float33'", "float32"], id="dtype-unknown-name"),
    pytest.param(lambda: xpnet.to_device(np.ones(2), dtype=3), TypeError,
                 ["dtype", "int 3", "'float32'"], id="dtype-int"),
    pytest.param(lambda: xpnet.to_device(np.ones(2), dtype=object()), TypeError,
                 ["dtype", "object"], id="dtype-object"),
    pytest.param(lambda: xpnet.to_device(np.ones(2), backend="numpy"), TypeError,
                 ["backend", "str 'numpy'", "xpnet.Backend"], id="backend-str"),
    pytest.param(lambda: xpnet.to_device("abc"), TypeError, ["x", "str", "NumPy array"],
                 id="to_device-str"),
    pytest.param(lambda: xpnet.to_device({"a": 1}), TypeError, ["x", "dict"],
                 id="to_device-dict"),
    pytest.param(lambda: xpnet.to_device(None), TypeError, ["x", "NoneType"],
                 id="to_device-none"),
    pytest.param(lambda: xpnet.to_device([[1.0, 2.0], [3.0]]), ValueError,
                 ["x", "ragged", "list"], id="to_device-ragged"),
    pytest.param(lambda: xpnet.to_numpy(np.array([object()])), TypeError,
                 ["x", "numeric", "object"], id="to_numpy-object-array"),
    pytest.param(lambda: xpnet.to_numpy("abc"), TypeError, ["x", "str"], id="to_numpy-str"),
    pytest.param(lambda: xpnet.to_numpy(None), TypeError, ["x", "NoneType"],
                 id="to_numpy-none"),
    pytest.param(lambda: backend_module.as_host({1, 2}, "x_train"), TypeError,
                 ["x_train", "set"], id="as_host-names-the-argument"),
]


@pytest.mark.parametrize(("call", "exc", "fragments"), TRANSFERS)
def test_bad_transfer(_numpy_selected, call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert xpnet.current() is _numpy_selected


def test_dtype_of_another_library_is_accepted_by_name(backend):
    x = xpnet.to_device(np.ones(3), dtype=np.float32)
    assert x.dtype == backend.xp.float32


def test_cli_bad_device_is_usage_error_exit_2(monkeypatch, capsys):
    from xpnet.__main__ import main

    require_backend("torch")
    monkeypatch.setenv("XPNET_BACKEND", "torch")
    monkeypatch.setenv("XPNET_DEVICE", "bogus")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'bogus'" in err and "Traceback" not in err
    assert main(["smoke", "--steps", "1"]) == 2
