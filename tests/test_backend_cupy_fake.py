"""CuPy-specific backend logic exercised on CPU with a stand-in ``cupy`` module: the kernel probe
(CuPy 14 needs the CUDA headers to compile kernels), multi-GPU selection (``Device.use()`` only
when selecting, never in ``available_backends``/``xpnet info``), and the CLI's one-line errors."""

from __future__ import annotations

import sys
import types

import pytest

import xpnet
from xpnet import backend as backend_module
from xpnet import info as info_module
from xpnet.__main__ import main

HEADERS_ERROR = ("Failed to find CUDA headers (cuda_fp16.h); install them with: "
                 "pip install cupy-cuda12x[ctk]")


class _FakeArray:
    def __mul__(self, other):
        return self

    def sum(self):
        return self

    def __float__(self):
        return 12.0


def _fake_cupy(monkeypatch, *, devices: int = 2, compiles: bool = True) -> list:
    """Install a stand-in cupy; return the list of device ids passed to Device.use()."""
    used: list[int] = []
    current = [0]

    class Device:
        def __init__(self, index=None):
            self.id = current[0] if index is None else int(index)

        def use(self):
            used.append(self.id)
            current[0] = self.id

        def __enter__(self):
            self._prev = current[0]
            current[0] = self.id
            return self

        def __exit__(self, *exc):
            current[0] = self._prev

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

        def __hash__(self):
            return hash(self.id)

        def __repr__(self):
            return f"<CUDA Device {self.id}>"

    Device.__module__ = "cupy.cuda.device"

    def arange(n, dtype=None):
        if not compiles:
            raise RuntimeError(HEADERS_ERROR)
        return _FakeArray()

    def props(i):
        return {"name": b"Fake GPU", "totalGlobalMem": 2**34, "major": 9, "minor": 0}

    runtime = types.SimpleNamespace(getDeviceCount=lambda: devices,
                                    getDeviceProperties=props)
    fake = types.ModuleType("cupy")
    fake.__version__ = "14.2.0-fake"
    fake.float32 = "float32"
    fake.arange = arange
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend_module, "_KERNEL_PROBE", {})
    monkeypatch.setattr(backend_module, "_compat",
                        lambda lib: types.SimpleNamespace(__name__=f"fake.{lib}"))
    monkeypatch.delenv("XPNET_BACKEND", raising=False)
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    monkeypatch.setattr(backend_module, "_current", None)  # restored after the test
    fake.current = current
    return used


def test_kernel_that_cannot_compile_is_backend_error_with_the_ctk_fix(monkeypatch):
    _fake_cupy(monkeypatch, compiles=False)
    with pytest.raises(xpnet.BackendError) as info:
        xpnet.set_backend("cupy")
    msg = str(info.value)
    assert "cannot compile a kernel on cuda:0" in msg and "Failed to find CUDA headers" in msg
    assert "ctk" in msg and 'pip install "xpnet[cupy12]"' in msg
    assert "\n" not in msg


def test_auto_falls_back_to_numpy_when_kernels_cannot_compile(monkeypatch):
    _fake_cupy(monkeypatch, compiles=False)
    assert xpnet.set_backend("auto").name == "numpy"
    report = xpnet.available_backends()
    assert report["cupy"].startswith("unavailable:") and "ctk" in report["cupy"]


def test_cli_reports_missing_toolkit_in_one_line(monkeypatch, capsys):
    _fake_cupy(monkeypatch, compiles=False)
    assert main(["smoke", "--backend", "cupy"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpnet: error: ") and "ctk" in err
    monkeypatch.setenv("XPNET_BACKEND", "cupy")
    assert main(["info"]) == 1
    out, err = capsys.readouterr()
    assert "Backends:" in out and err.count("\n") == 1 and "CUDA headers" in err


def test_explain_cuda_error_recognises_compile_failures():
    assert "ctk" in backend_module.explain_cuda_error(RuntimeError(HEADERS_ERROR))
    assert backend_module.explain_cuda_error(RuntimeError("out of memory")) is None


def test_selecting_cuda1_uses_device_1_and_info_does_not_switch_back(monkeypatch):
    used = _fake_cupy(monkeypatch)
    b = xpnet.set_backend("cupy", "cuda:1")
    assert b.device.id == 1 and used == [1]
    assert sys.modules["cupy"].current == [1]
    xpnet.available_backends()
    info = info_module.collect_info()
    assert info["devices"]["cupy"][0]["name"] == "Fake GPU"
    resolved = backend_module.resolve_backend("cupy")  # pure: nothing is used
    assert resolved.device.id == 0
    assert used == [1] and sys.modules["cupy"].current == [1]
    assert xpnet.current() is b


def test_missing_cuda_device_lists_what_exists(monkeypatch):
    used = _fake_cupy(monkeypatch, devices=2)
    with pytest.raises(xpnet.BackendError, match=r"'cuda:5' does not exist.*cuda:0, cuda:1"):
        xpnet.set_backend("cupy", "cuda:5")
    assert used == []


def test_device_scope_enters_cupy_devices_only(monkeypatch):
    _fake_cupy(monkeypatch)
    dev = sys.modules["cupy"].cuda.Device(1)
    with backend_module.device_scope(dev):
        assert sys.modules["cupy"].current == [1]
    assert sys.modules["cupy"].current == [0]
    with backend_module.device_scope("cpu"):
        pass
