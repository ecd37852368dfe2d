"""CuPy-specific backend logic exercised on CPU with a stand-in ``cupy`` module: the probe (a
kernel, a cuRAND draw, a cuBLAS matmul; a missing header told apart from a driver/NVRTC
mismatch), a machine without an NVIDIA driver, multi-GPU selection (``Device.use()`` only when
selecting, never in ``available_backends``/``xpnet info``), install hints that fit how xpnet was
installed, the NCCL transport's named error, and the CLI's one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import xpnet
from xpnet import backend as backend_module
from xpnet import info as info_module
from xpnet.__main__ import main
from xpnet.backend import hints, probe
from xpnet.distributed import NcclUnavailableError
from xpnet.distributed.nccl import NcclCommunicator

HEADERS_ERROR = ("Failed to find CUDA headers (cuda_fp16.h); install them with: "
                 "pip install cupy-cuda12x[ctk]")
NVRTC_ERROR = ("NVRTCError: NVRTC_ERROR_INVALID_OPTION (5): --gpu-architecture=sm_90 is not "
               "supported by this NVRTC")
INCLUDE_ERROR = ('CompileException: /tmp/kern.cu(1): catastrophic error: cannot open source '
                 'file "cuda_fp16.h"')


class _FakeArray:
    def __mul__(self, other):
        return self

    def __matmul__(self, other):
        return self

    def sum(self):
        return self

    def __float__(self):
        return 12.0


def _fake_cupy(monkeypatch, *, devices: int = 2, fail: dict | None = None,
               driver: int = 12040, count=None) -> list:
    """Install a stand-in cupy; return the list of device ids passed to Device.use().

    ``fail`` maps a probe stage ('kernel', 'cuRAND', 'cuBLAS') to the error it raises;
    ``driver`` is what cudaDriverGetVersion answers; ``count`` replaces getDeviceCount.
    """
    fail = fail or {}
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

    def stage(name):
        def make(*args, **kwargs):
            if name in fail:
                raise fail[name]
            return _FakeArray()
        return make

    class RandomState:
        def __init__(self, seed=None):
            pass

        random_sample = staticmethod(stage("cuRAND"))

    def props(i):
        return {"name": b"Fake GPU", "totalGlobalMem": 2**34, "major": 9, "minor": 0}

    runtime = types.SimpleNamespace(getDeviceCount=count or (lambda: devices),
                                    driverGetVersion=lambda: driver,
                                    getDeviceProperties=props, runtimeGetVersion=lambda: 12080)
    fake = types.ModuleType("cupy")
    fake.__version__ = "14.2.0-fake"
    fake.float32 = "float32"
    fake.arange = stage("kernel")
    fake.ones = stage("cuBLAS")
    fake.random = types.SimpleNamespace(RandomState=RandomState)
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(probe, "_PROBE", {})
    monkeypatch.setattr(backend_module.selection, "_compat",
                        lambda lib: types.SimpleNamespace(__name__=f"fake.{lib}"))
    monkeypatch.delenv("XPNET_BACKEND", raising=False)
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    monkeypatch.setattr(backend_module.selection, "_current", None)  # restored after the test
    fake.current = current
    return used


def _cupy_error(monkeypatch, **kw) -> str:
    _fake_cupy(monkeypatch, **kw)
    with pytest.raises(xpnet.BackendError) as info:
        xpnet.set_backend("cupy")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- the probe
def test_kernel_that_cannot_compile_is_backend_error_with_the_ctk_fix(monkeypatch):
    msg = _cupy_error(monkeypatch, fail={"kernel": RuntimeError(HEADERS_ERROR)})
    assert "cannot run a kernel on cuda:0" in msg and "Failed to find CUDA headers" in msg
    assert "a CUDA header is missing" in msg
    assert "ctk" in msg and hints.install_command("cupy12") in msg


def test_a_missing_include_is_blamed_on_headers(monkeypatch):
    msg = _cupy_error(monkeypatch, fail={"kernel": RuntimeError(INCLUDE_ERROR)})
    assert "a CUDA header is missing" in msg and "ctk" in msg


def test_an_nvrtc_driver_mismatch_is_not_blamed_on_headers(monkeypatch):
    msg = _cupy_error(monkeypatch, fail={"kernel": RuntimeError(NVRTC_ERROR)})
    assert "driver/NVRTC mismatch" in msg and "update the NVIDIA driver" in msg
    assert "a CUDA header is missing" not in msg and "ctk" not in msg


@pytest.mark.parametrize("stage,what", [("cuRAND", "a cuRAND draw"),
                                        ("cuBLAS", "a cuBLAS matmul")])
def test_the_probe_covers_curand_and_cublas(monkeypatch, stage, what):
    error = OSError(f"CuPy failed to load lib{stage.lower()}.so.12: cannot open shared object")
    msg = _cupy_error(monkeypatch, fail={stage: error})
    assert f"cannot run {what} on cuda:0" in msg and f"{stage} could not be loaded" in msg
    assert "ctk" in msg


def test_the_probe_runs_once_per_device(monkeypatch):
    _fake_cupy(monkeypatch)
    assert xpnet.set_backend("cupy").name == "cupy"
    sys.modules["cupy"].arange = None  # a second probe would fail: it is not run again
    assert xpnet.set_backend("cupy").name == "cupy"


def test_auto_falls_back_to_numpy_when_kernels_cannot_compile(monkeypatch):
    _fake_cupy(monkeypatch, fail={"kernel": RuntimeError(HEADERS_ERROR)})
    assert xpnet.set_backend("auto").name == "numpy"
    report = xpnet.available_backends()
    assert report["cupy"].startswith("unavailable:") and "ctk" in report["cupy"]


# ----------------------------------------------------------------------------- no driver
def _insufficient_driver():
    raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                       "CUDA runtime version")


def test_no_nvidia_driver_is_said_plainly_without_a_reinstall_loop(monkeypatch, capsys):
    # cudaDriverGetVersion gives 0 without a driver
    msg = _cupy_error(monkeypatch, driver=0, count=_insufficient_driver)
    assert "no NVIDIA driver/GPU on this machine" in msg
    assert "insufficient" not in msg and "pip install" not in msg
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "no NVIDIA driver/GPU on this machine" in out and "pip install" not in out


def test_a_driver_older_than_cupy_says_update_or_match(monkeypatch):
    msg = _cupy_error(monkeypatch, driver=11080, count=_insufficient_driver)
    assert "cannot use the NVIDIA driver" in msg and "update the NVIDIA driver" in msg
    assert "no NVIDIA driver/GPU" not in msg


# ----------------------------------------------------------------------------- install hints
def _dist(monkeypatch, direct_url: dict | None):
    class Dist:
        def read_text(self, name):
            return None if direct_url is None else json.dumps(direct_url)

    monkeypatch.setattr(hints.importlib.metadata, "distribution", lambda name: Dist())


def test_install_hint_from_an_index(monkeypatch):
    _dist(monkeypatch, None)
    monkeypatch.setattr(hints, "_source_tree", lambda: None)
    assert hints.installed_from() == hints.Install("index", None)
    assert hints.install_command("cupy12") == 'pip install "xpnet[cupy12]"'


def test_install_hint_running_from_a_checkout():
    root = Path(xpnet.__file__).resolve().parents[1]  # this test runs from one
    assert hints.installed_from() == hints.Install("editable", root)
    assert hints.install_command("cupy12") == f'pip install -e ".[cupy12]" in the checkout {root}'


def test_install_hint_for_a_copy_installed_from_a_checkout(monkeypatch, tmp_path):
    _dist(monkeypatch, {"url": f"file://{tmp_path}", "dir_info": {}})
    monkeypatch.setattr(hints, "_source_tree", lambda: None)  # running from site-packages
    assert hints.installed_from() == hints.Install("checkout", tmp_path)
    assert hints.install_command("mpi") == f'pip install ".[mpi]" in the checkout {tmp_path}'


def test_install_hint_for_a_wheel_file(monkeypatch, tmp_path):
    wheel = tmp_path / "xpnet-0.1.0-py3-none-any.whl"
    _dist(monkeypatch, {"url": f"file://{wheel}", "archive_info": {}})
    monkeypatch.setattr(hints, "_source_tree", lambda: None)
    assert hints.install_command("cupy13") == f'pip install "{wheel}[cupy13]"'


def test_a_missing_cupy_names_the_command_that_fits_the_install(monkeypatch):
    _dist(monkeypatch, None)
    monkeypatch.setattr(hints, "_source_tree", lambda: None)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.setattr(backend_module.selection, "_current", None)
    with pytest.raises(xpnet.BackendError, match=r'CuPy is not installed.*pip install '
                                                 r'"xpnet\[cupy12\]"'):
        xpnet.set_backend("cupy")


# ----------------------------------------------------------------------------- NCCL
def _fake_nccl(monkeypatch, module):
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = module
    fake = types.ModuleType("cupy")
    fake.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    if module is None:
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", None)
    else:
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", module)


@pytest.mark.parametrize("major", [12, 13])
def test_nccl_missing_names_the_package_to_install(monkeypatch, major):
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = False  # CuPy without the NCCL wheel: no NcclCommunicator either
    _fake_nccl(monkeypatch, nccl)
    monkeypatch.setattr(hints, "cupy_cuda_major", lambda: major)
    from xpnet.distributed import nccl as nccl_module

    monkeypatch.setattr(nccl_module, "cupy_cuda_major", lambda: major)
    with pytest.raises(NcclUnavailableError) as info:
        NcclCommunicator(1, 0)
    msg = str(info.value)
    assert f"pip install nvidia-nccl-cu{major}" in msg
    assert hints.install_command(f"cupy{major}") in msg and "XPNET_CUDA_AWARE_MPI" in msg
    assert isinstance(info.value, xpnet.BackendError)


def test_nccl_binding_that_cannot_import_is_the_same_named_error(monkeypatch):
    _fake_nccl(monkeypatch, None)
    from xpnet.distributed import nccl as nccl_module

    monkeypatch.setattr(nccl_module, "cupy_cuda_major", lambda: None)
    with pytest.raises(NcclUnavailableError, match="nvidia-nccl-cu12 .* nvidia-nccl-cu13"):
        NcclCommunicator(1, 0)


def test_the_cupy_extras_and_requirement_files_bring_nccl():
    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    for major in (12, 13):
        assert f'cupy{major} = ["cupy-cuda{major}x[ctk]>=14", "nvidia-nccl-cu{major}' in text
        req = (root / "backends" / f"cupy-cuda{major}x.txt").read_text()
        assert f"nvidia-nccl-cu{major}" in req


# ----------------------------------------------------------------------------- CLI, devices
def test_cli_reports_missing_toolkit_in_one_line(monkeypatch, capsys):
    _fake_cupy(monkeypatch, fail={"kernel": RuntimeError(HEADERS_ERROR)})
    assert main(["smoke", "--backend", "cupy"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpnet: error: ") and "ctk" in err
    monkeypatch.setenv("XPNET_BACKEND", "cupy")
    assert main(["info"]) == 1
    out, err = capsys.readouterr()
    assert "Backends:" in out and err.count("\n") == 1 and "CUDA headers" in err


def test_explain_cuda_error_recognises_compile_failures():
    assert "ctk" in backend_module.explain_cuda_error(RuntimeError(HEADERS_ERROR))
    mismatch = backend_module.explain_cuda_error(RuntimeError(NVRTC_ERROR))
    assert "driver/NVRTC mismatch" in mismatch and "ctk" not in mismatch
    library = backend_module.explain_cuda_error(OSError(
        "libcublas.so.12: cannot open shared object file: No such file or directory"))
    assert "a CUDA library could not be loaded" in library and "ctk" in library
    assert "a CUDA header is missing" not in library
    gcc = backend_module.explain_cuda_error(RuntimeError("cuda_fp16.h: No such file or directory"))
    assert "a CUDA header is missing" in gcc
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
