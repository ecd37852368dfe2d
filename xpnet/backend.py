"""Backend selection: which array namespace and device xpnet computes on.

The backend is chosen once (``XPNET_BACKEND`` or :func:`set_backend`) and read everywhere else
through :func:`current`. This module and :mod:`xpnet.ops` are the only places that name a
concrete array library; everything else receives an ``xp`` namespace.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from .hostmem import keep_freed_memory

__all__ = [
    "BACKENDS", "Backend", "BackendError", "DeviceMismatchError", "available_backends",
    "check_same_device", "current", "get_backend", "set_backend", "to_device", "to_numpy",
]

log = logging.getLogger("xpnet")

BACKENDS = ("auto", "numpy", "cupy", "torch", "array_api_strict")
CUPY_INSTALL = 'pip install "xpnet[cupy12]"  (CUDA 12; use xpnet[cupy13] for CUDA 13)'
INSTALL_HINTS = {
    "cupy": CUPY_INSTALL,
    "torch": "pip install torch==2.13.0  (CPU build; see backends/torch.txt)",
    "array_api_strict": "pip install array-api-strict",
}


class BackendError(RuntimeError):
    """A backend was asked for that cannot run here (library or device missing)."""


class DeviceMismatchError(ValueError):
    """Two arrays of one operation live in different namespaces or on different devices."""


@dataclass(frozen=True)
class Backend:
    """The selected backend: its name, Array API namespace, device and library version."""

    name: str
    xp: ModuleType
    device: Any
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} on {self.device}"


_current: Backend | None = None


def _cuda_status() -> tuple[bool, str]:
    """(usable, reason) for CuPy with at least one CUDA device."""
    try:
        import cupy
    except ImportError as exc:
        return False, f"CuPy is not installed ({exc}); install it with: {CUPY_INSTALL}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        return False, f"CuPy {cupy.__version__} is installed but no CUDA device is usable ({exc})"
    if n == 0:
        return False, f"CuPy {cupy.__version__} is installed but no CUDA device was found"
    return True, f"CuPy {cupy.__version__}, {n} CUDA device(s)"


def _parse_device_index(device: str | int | None, prefix: str) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    text = str(device)
    if text.startswith(prefix + ":"):
        text = text[len(prefix) + 1:]
    if not text.isdigit():
        raise ValueError(f"device: expected '{prefix}:N' or an integer, got {device!r}")
    return int(text)


def _compat(lib: str) -> ModuleType:
    """array-api-compat's wrapper namespace for a library (imported on demand)."""
    return importlib.import_module(f"array_api_compat.{lib}")


def _make(name: str, device: str | int | None) -> Backend:
    """Build a Backend for an explicit name, raising BackendError if it cannot run here."""
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"device: numpy runs on 'cpu' only, got {device!r}")
        return Backend("numpy", _compat("numpy"), "cpu", np.__version__)
    if name == "cupy":
        ok, why = _cuda_status()
        if not ok:
            hint = "" if CUPY_INSTALL in why else (
                f"; check the NVIDIA driver and that the CuPy wheel matches its CUDA version: "
                f"{CUPY_INSTALL}")
            raise BackendError(f"backend 'cupy' cannot run here: {why}{hint}")
        import cupy
        index = _parse_device_index(device, "cuda")
        if index >= cupy.cuda.runtime.getDeviceCount():
            raise BackendError(f"device: cuda:{index} does not exist "
                               f"({cupy.cuda.runtime.getDeviceCount()} CUDA device(s))")
        dev = cupy.cuda.Device(index)
        dev.use()
        return Backend("cupy", _compat("cupy"), dev, cupy.__version__)
    if name == "torch":
        try:
            import torch
        except ImportError as exc:
            raise BackendError(f"backend 'torch' is not installed ({exc}); install it with: "
                               f"{INSTALL_HINTS['torch']}") from exc
        dev = torch.device(device if device is not None else "cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device: {device!r} asked for, but torch sees no CUDA device")
        return Backend("torch", _compat("torch"), dev, torch.__version__)
    if name == "array_api_strict":
        try:
            xp = importlib.import_module("array_api_strict")
        except ImportError as exc:
            raise BackendError(f"backend 'array_api_strict' is not installed ({exc}); "
                               f"install it with: {INSTALL_HINTS['array_api_strict']}") from exc
        dev = xp.Device(device) if device is not None else xp.Device("CPU_DEVICE")
        return Backend("array_api_strict", xp, dev, xp.__version__)
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def set_backend(name: str | None = None, device: str | int | None = None) -> Backend:
    """Select the backend used from now on and return it.

    Parameters
    ----------
    name : 'auto' | 'numpy' | 'cupy' | 'torch' | 'array_api_strict', or None to read
        ``XPNET_BACKEND`` (default 'auto': CuPy when a CUDA device is usable, else NumPy).
    device : backend-specific device, e.g. 'cuda:1' or 1 for CuPy, 'cpu' or 'cuda:0' for torch,
        'device1' for array_api_strict; None reads ``XPNET_DEVICE``, then the backend default.

    An explicit name never falls back: a missing library or GPU raises :class:`BackendError`
    with the install command.
    """
    global _current
    if name is None:
        name = os.environ.get("XPNET_BACKEND", "auto") or "auto"
    name = name.strip().lower().replace("-", "_")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (from XPNET_BACKEND or set_backend); "
                         f"expected one of: {', '.join(BACKENDS)}")
    if device is None:
        device = os.environ.get("XPNET_DEVICE") or None
    if name == "auto":
        ok, why = _cuda_status()
        chosen = "cupy" if ok else "numpy"
        backend = _make(chosen, device if ok else None)
        log.info("xpnet: backend auto -> %s (%s)", backend, why)
    else:
        backend = _make(name, device)
    if _computes_on_host(backend):
        keep_freed_memory()  # stop re-faulting the same pages every training step
    _current = backend
    return backend


def _computes_on_host(b: Backend) -> bool:
    """True when the backend's arrays live in host memory (NumPy, array_api_strict, torch CPU)."""
    return b.name in ("numpy", "array_api_strict") or (
        b.name == "torch" and getattr(b.device, "type", "") == "cpu")


def current() -> Backend:
    """The selected backend, selecting from the environment on first use."""
    return _current if _current is not None else set_backend()


get_backend = current


def available_backends() -> dict[str, str]:
    """Map of backend name to version (or the reason it is unavailable), for ``xpnet info``."""
    out = {}
    for name in BACKENDS[1:]:
        try:
            out[name] = _make(name, None).version
        except (BackendError, ValueError) as exc:
            out[name] = f"unavailable: {exc}"
    return out


def to_device(x: Any, dtype: Any = None, backend: Backend | None = None) -> Any:
    """Move host data (NumPy array, list, scalar) to the current backend's device.

    ``dtype`` may be a dtype name ('float32') or a namespace dtype. With ``dtype=None`` a NumPy
    array keeps its dtype and Python floats become float32. Arrays already on the backend are
    returned as they are (no copy) unless the dtype or device differs.
    """
    b = backend or current()
    xp = b.xp
    if isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    if not _is_array_of(b, x):
        host = np.asarray(x)
        if dtype is None and host.dtype.kind == "f" and not isinstance(x, np.ndarray):
            dtype = xp.float32  # Python floats: xpnet's default, not NumPy's float64
        return xp.asarray(host, dtype=dtype, device=b.device)
    if dtype is not None and x.dtype != dtype:
        x = xp.astype(x, dtype)
    if array_api_compat.device(x) != b.device:
        x = array_api_compat.to_device(x, b.device)
    return x


def _is_array_of(b: Backend, x: Any) -> bool:
    """True when x is already an array of backend b's library."""
    if isinstance(x, np.ndarray):
        return b.name == "numpy"
    if not array_api_compat.is_array_api_obj(x):
        return False
    try:
        return array_api_compat.array_namespace(x) is b.xp
    except TypeError:
        return False


def to_numpy(x: Any) -> np.ndarray:
    """Bring any supported array (or scalar) back to the host as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_array_api_obj(x) and type(x).__module__.startswith("array_api_strict"):
        cpu = type(x).__module__.split(".")[0]
        xp = importlib.import_module(cpu)
        if x.device != xp.Device("CPU_DEVICE"):
            x = x.to_device(xp.Device("CPU_DEVICE"))
        return np.asarray(x)
    return np.asarray(x)


def describe(x: Any) -> str:
    """'torch array on cpu' style description for error messages."""
    if not array_api_compat.is_array_api_obj(x):
        return f"{type(x).__name__} (not an array)"
    lib = type(x).__module__.split(".")[0]
    return f"{lib} array on {array_api_compat.device(x)}"


def check_same_device(a: Any, b: Any, a_name: str, b_name: str) -> None:
    """Raise DeviceMismatchError naming both sides when a and b cannot be combined."""
    if type(a) is type(b) and array_api_compat.device(a) == array_api_compat.device(b):
        return
    da, db = describe(a), describe(b)
    if da == db:
        return
    raise DeviceMismatchError(
        f"{a_name} ({da}) and {b_name} ({db}) cannot be combined in one operation; move the "
        "data with xpnet.to_device(x), or the model with model.to_device(), first")
