"""Probing: can CuPy run here, and which devices does each library see.

CuPy imports on a machine without a GPU, and sees a GPU on a machine without the CUDA headers;
what fails is the first kernel (compiled at run time by NVRTC), the first random draw (cuRAND)
or the first matmul (cuBLAS). :func:`cuda_status` runs one of each, once per process and
device, and says in one line what is missing and how to fix it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from .hints import cupy_cuda_major, install_command

__all__ = ["cuda_devices", "cuda_status", "explain_cuda_error", "no_driver_message",
           "strict_devices", "torch_devices", "toolkit_fix"]

_PROBE: dict[int, str] = {}

# what says a header is missing: CuPy's own check, NVRTC's #include error, gcc/clang style
_MISSING_HEADER = re.compile(r"Failed to find CUDA headers|cannot open source file"
                             r"|\.h['\"]?(:| file) (No such file|not found)")
# what CuPy says when a compile or CUDA library failed
_COMPILE = ("CompileException", "NVRTCError", "nvrtc", "NVRTC", "PTX", "ptx")


def cupy_install() -> str:
    """The command that installs CuPy with the CUDA libraries it needs."""
    return f"{install_command('cupy12')} (for a CUDA 12 driver; cupy13 for CUDA 13)"


def toolkit_fix() -> str:
    """How to get the CUDA headers, NVRTC and libraries CuPy 14 needs."""
    return ("install the CUDA headers, NVRTC and libraries with the CuPy wheel's ctk extra: "
            f"{cupy_install()} (they pull cupy-cuda12x[ctk] / cupy-cuda13x[ctk]), or use a "
            "CUDA toolkit / devel image")


def _driver_fix() -> str:
    return ("update the NVIDIA driver, or install the CuPy that matches the driver's CUDA "
            f"version (nvidia-smi shows it): {cupy_install()}")


def no_driver_message(cupy: Any, detail: str = "") -> str:
    """What to say when CuPy is installed on a machine without an NVIDIA driver or GPU: no
    reinstall would help."""
    said = f"; CUDA says {detail}" if detail else ""
    return (f"no NVIDIA driver/GPU on this machine (CuPy {cupy.__version__} is installed, but "
            f"it needs an NVIDIA GPU and its driver{said}); use the numpy or torch backend here")


def _nvidia_driver_present(cupy: Any) -> bool:
    try:
        return int(cupy.cuda.runtime.driverGetVersion()) > 0  # 0: no driver installed
    except Exception:  # the runtime could not even ask: look for the kernel module
        return os.path.exists("/proc/driver/nvidia/version")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text or [''])[0][:200]}".rstrip(": ")


def _classify(stage: str, exc: BaseException) -> str:
    """The cause and fix of a failed probe ``stage`` ('kernel', 'cuRAND', 'cuBLAS')."""
    text = f"{type(exc).__name__}: {exc}"
    if _MISSING_HEADER.search(text):
        return f"a CUDA header is missing ({_first_line(exc)}); {toolkit_fix()}"
    if stage == "kernel" and any(h in text for h in _COMPILE):
        return (f"NVRTC could not compile for this GPU and driver ({_first_line(exc)}); no "
                f"header is missing, so most likely a driver/NVRTC mismatch (a driver older "
                f"than CuPy's CUDA); {_driver_fix()}")
    if stage != "kernel" and ("lib" in text or "load" in text.lower()):
        return f"{stage} could not be loaded ({_first_line(exc)}); {toolkit_fix()}"
    return f"{_first_line(exc)}; {_driver_fix()}"


_WHAT = {"kernel": "a kernel", "cuRAND": "a cuRAND draw", "cuBLAS": "a cuBLAS matmul"}


def _probe(cupy: Any, index: int) -> str:
    """'' when a kernel, a cuRAND draw and a cuBLAS matmul run on device ``index``, else why."""
    if index in _PROBE:
        return _PROBE[index]
    stages: tuple[tuple[str, Callable[[], float]], ...] = (
        ("kernel", lambda: float((cupy.arange(4, dtype=cupy.float32) * 2).sum())),
        ("cuRAND", lambda: float(cupy.random.RandomState(0).random_sample(
            (4,), dtype=cupy.float32).sum())),
        ("cuBLAS", lambda: float((cupy.ones((2, 2), dtype=cupy.float32)
                                  @ cupy.ones((2, 2), dtype=cupy.float32)).sum())),
    )
    problem = ""
    with cupy.cuda.Device(index):
        for stage, run in stages:
            try:
                run()
            except Exception as exc:  # RuntimeError (headers), CompileException, CUDA errors
                problem = (f"CuPy {cupy.__version__} sees the GPU but cannot run "
                           f"{_WHAT[stage]} on cuda:{index}: {_classify(stage, exc)}")
                break
    _PROBE[index] = problem
    return problem


def cuda_status(index: int = 0) -> tuple[bool, str]:
    """(usable, reason) for CuPy on CUDA device ``index``: installed, a driver and a GPU, and
    a kernel, a cuRAND draw and a cuBLAS matmul that run there."""
    try:
        import cupy
    except ImportError as exc:
        return False, f"CuPy is not installed ({exc}); install it with: {cupy_install()}"
    if not _nvidia_driver_present(cupy):
        return False, no_driver_message(cupy)
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no GPU, a driver older than CuPy's runtime, or a broken one
        if "NoDevice" in str(exc) or "no CUDA-capable device" in str(exc):
            return False, no_driver_message(cupy, _first_line(exc))
        return False, (f"CuPy {cupy.__version__} (CUDA {cupy_cuda_major() or '?'}) cannot use "
                       f"the NVIDIA driver ({_first_line(exc)}); {_driver_fix()}")
    if n == 0:
        return False, no_driver_message(cupy)
    if 0 <= index < n:
        problem = _probe(cupy, index)
        if problem:
            return False, problem
    return True, f"CuPy {cupy.__version__}, {n} CUDA device(s)"


def explain_cuda_error(exc: BaseException) -> str | None:
    """One line with the fix for a CuPy compile or CUDA-library failure, else None."""
    text = f"{type(exc).__name__}: {exc}"
    if _MISSING_HEADER.search(text):
        return f"CuPy cannot compile its kernels here: {_classify('kernel', exc)}"
    if any(h in text for h in _COMPILE):
        return f"CuPy cannot run here: {_classify('kernel', exc)}"
    if "libcu" in text or "libnv" in text:
        return f"CuPy cannot run here: {_classify('a CUDA library', exc)}"
    return None


def _gpu(index: int, name: Any, total: int, major: int, minor: int) -> dict[str, Any]:
    return {"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
            "total_memory_gib": round(total / 2**30, 2),
            "compute_capability": f"{major}.{minor}"}


def cuda_devices() -> list[dict[str, Any]]:
    """CUDA devices seen through CuPy (empty when CuPy or a usable GPU is missing): one dict
    per device with ``index``, ``name``, ``total_memory_gib``, ``compute_capability``."""
    if not cuda_status()[0]:
        return []
    import cupy

    out = []
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        out.append(_gpu(i, p["name"], p["totalGlobalMem"], p["major"], p["minor"]))
    return out


def torch_devices() -> list[dict[str, Any]]:
    """Torch CUDA devices, as :func:`cuda_devices` (empty without torch or a CUDA build)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [_gpu(i, p.name, p.total_memory, p.major, p.minor)
            for i, p in ((i, torch.cuda.get_device_properties(i))
                         for i in range(torch.cuda.device_count()))]


def strict_devices() -> list[str]:
    """The simulated devices array_api_strict offers (empty when it is not installed)."""
    try:
        import array_api_strict as xp
    except ImportError:
        return []
    return [str(getattr(d, "_device", d)) for d in xp.__array_namespace_info__().devices()]
