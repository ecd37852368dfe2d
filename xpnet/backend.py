"""Backend selection: which array namespace and device xpnet computes on.

The backend is chosen once (``XPNET_BACKEND`` or :func:`set_backend`) and read everywhere else
through :func:`current`. This module and :mod:`xpnet.ops` are the only places that name a
concrete array library; everything else receives an ``xp`` namespace.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from .hostmem import keep_freed_memory

__all__ = [
    "BACKENDS", "Backend", "BackendError", "DeviceMismatchError", "as_host", "available_backends",
    "check_same_device", "current", "device_scope", "free_device_memory", "get_backend",
    "resolve_backend", "set_backend", "to_device", "to_numpy",
]

log = logging.getLogger("xpnet")

BACKENDS = ("auto", "numpy", "cupy", "torch", "array_api_strict")
CUPY_INSTALL = 'pip install "xpnet[cupy12]"  (CUDA 12; use xpnet[cupy13] for CUDA 13)'
# CuPy 14 compiles every kernel at run time with NVRTC and needs the CUDA headers for it
CUPY_TOOLKIT_FIX = ('install the CUDA headers and NVRTC with the CuPy wheel\'s ctk extra: '
                    'pip install "xpnet[cupy12]" (it pulls "cupy-cuda12x[ctk]"; xpnet[cupy13] '
                    'for CUDA 13), or use a CUDA toolkit / devel image')
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


_KERNEL_PROBE: dict[int, str] = {}


def _cupy_kernel_problem(cupy: Any, index: int) -> str:
    """'' when CuPy can compile and run a kernel on device ``index``, else the reason.

    CuPy compiles its elementwise and reduction kernels at run time (NVRTC plus the CUDA
    headers); a driver-only machine imports CuPy and sees the GPU, then fails at the first
    kernel. One tiny kernel, once per process and device, finds that out up front. It runs
    inside the device's context and leaves CuPy's current device as it was.
    """
    if index not in _KERNEL_PROBE:
        try:
            with cupy.cuda.Device(index):
                float((cupy.arange(4, dtype=cupy.float32) * 2).sum())
            _KERNEL_PROBE[index] = ""
        except Exception as exc:  # RuntimeError (headers), CompileException, NVRTCError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _KERNEL_PROBE[index] = (f"CuPy {cupy.__version__} sees the GPU but cannot compile "
                                    f"a kernel on cuda:{index} ({type(exc).__name__}: "
                                    f"{first[:200]}); {CUPY_TOOLKIT_FIX}")
    return _KERNEL_PROBE[index]


_CUDA_ERROR_HINTS = ("CUDA headers", "cuda_fp16.h", "cuda_runtime.h", "NVRTC", "nvrtc",
                     "CompileException", "libnvrtc", "ctk")


def explain_cuda_error(exc: BaseException) -> str | None:
    """One line with the fix for a CuPy kernel-compilation failure, else None.

    CuPy 14 on CUDA 12.2+ raises ``RuntimeError: Failed to find CUDA headers ...`` (or an
    NVRTC/compile error) at the first kernel of a machine that has only a driver.
    """
    text = f"{type(exc).__name__}: {exc}"
    if not any(h in text for h in _CUDA_ERROR_HINTS):
        return None
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:300]
    return f"CuPy cannot compile its kernels here ({first}); {CUPY_TOOLKIT_FIX}"


def _cuda_status(index: int = 0) -> tuple[bool, str]:
    """(usable, reason) for CuPy with at least one CUDA device that can run a kernel."""
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
    if 0 <= index < n:
        problem = _cupy_kernel_problem(cupy, index)
        if problem:
            return False, problem
    return True, f"CuPy {cupy.__version__}, {n} CUDA device(s)"


def _parse_device_index(device: str | int | None, prefix: str) -> int:
    if device is None:
        return 0
    if isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise ValueError(f"device: expected '{prefix}:N' or an integer N >= 0, got {device}")
        return device
    if not isinstance(device, str):
        index = getattr(device, "id", None)  # a cupy.cuda.Device
        if isinstance(index, int):
            return index
        raise TypeError(f"device: expected '{prefix}:N' or an integer, got "
                        f"{type(device).__name__} {device!r}")
    text = device.strip()
    if text.startswith(prefix + ":"):
        text = text[len(prefix) + 1:]
    elif text == prefix:
        text = "0"
    if not text.isdigit():
        raise ValueError(f"device: expected '{prefix}:N' or an integer, got {device!r}")
    return int(text)


def _device_source(device: Any, from_env: bool) -> str:
    return f"{device!r} (from XPNET_DEVICE)" if from_env else repr(device)


def _compat(lib: str) -> ModuleType:
    """array-api-compat's wrapper namespace for a library (imported on demand)."""
    return importlib.import_module(f"array_api_compat.{lib}")


def _make(name: str, device: Any, from_env: bool = False) -> Backend:
    """Build a Backend for an explicit name, raising BackendError if it cannot run here.

    Pure: nothing global changes (CuPy's current device included); :func:`set_backend`
    activates the result.
    """
    given = _device_source(device, from_env)
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"device: numpy runs on 'cpu' only, got {given}")
        return Backend("numpy", _compat("numpy"), "cpu", np.__version__)
    if name == "cupy":
        index = _parse_device_index(device, "cuda")
        ok, why = _cuda_status(index)
        if not ok:
            hint = "" if (CUPY_INSTALL in why or CUPY_TOOLKIT_FIX in why) else (
                f"; check the NVIDIA driver and that the CuPy wheel matches its CUDA version: "
                f"{CUPY_INSTALL}")
            raise BackendError(f"backend 'cupy' cannot run here: {why}{hint}")
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        if index >= count:
            raise BackendError(f"device: {given} does not exist; CuPy sees {count} CUDA "
                               f"device(s): " + ", ".join(f"cuda:{i}" for i in range(count)))
        return Backend("cupy", _compat("cupy"), cupy.cuda.Device(index), cupy.__version__)
    if name == "torch":
        try:
            import torch
        except ImportError as exc:
            raise BackendError(f"backend 'torch' is not installed ({exc}); install it with: "
                               f"{INSTALL_HINTS['torch']}") from exc
        if isinstance(device, bool) or not (device is None or isinstance(device, (str, int))
                                            or isinstance(device, torch.device)):
            raise TypeError(f"device: expected 'cpu', 'cuda' or 'cuda:N' for torch, got "
                            f"{type(device).__name__} {device!r}")
        try:
            dev = torch.device(device if device is not None else "cpu")
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N' for torch, got "
                             f"{given}") from exc
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N' for torch, got {given}")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendError(f"device: {given} asked for, but torch {torch.__version__} "
                                   "sees no CUDA device (a CPU build, or no usable GPU); use "
                                   "device 'cpu' or install a CUDA build of torch")
            count = torch.cuda.device_count()
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            elif dev.index >= count:
                raise BackendError(f"device: {given} does not exist; torch sees {count} CUDA "
                                   f"device(s)")
        return Backend("torch", _compat("torch"), dev, torch.__version__)
    if name == "array_api_strict":
        try:
            xp = importlib.import_module("array_api_strict")
        except ImportError as exc:
            raise BackendError(f"backend 'array_api_strict' is not installed ({exc}); "
                               f"install it with: {INSTALL_HINTS['array_api_strict']}") from exc
        valid = list(xp.__array_namespace_info__().devices())
        if device is None:
            return Backend("array_api_strict", xp, xp.Device("CPU_DEVICE"), xp.__version__)
        if device in valid:
            return Backend("array_api_strict", xp, device, xp.__version__)
        names = [str(getattr(d, "_device", d)) for d in valid]
        if isinstance(device, str) and device in names:
            return Backend("array_api_strict", xp, xp.Device(device), xp.__version__)
        raise ValueError(f"device: array_api_strict has no device {given}; expected one of: "
                         f"{', '.join(names)}")
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def _normalise_name(name: Any, from_env: bool) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a backend name (str), one of {', '.join(BACKENDS)}; "
                        f"got {type(name).__name__} {name!r}")
    key = name.strip().lower().replace("-", "_") or "auto"
    if key not in BACKENDS:
        where = "from XPNET_BACKEND" if from_env else "the backend name"
        raise ValueError(f"unknown backend {key!r} ({where}); expected one of: "
                         f"{', '.join(BACKENDS)}")
    return key


def resolve_backend(name: str | None = None, device: Any = None) -> Backend:
    """The Backend :func:`set_backend` would select, without selecting it.

    Nothing global changes: not xpnet's selection, not CuPy's current device. Raises what
    :func:`set_backend` raises.
    """
    from_env_name = name is None
    if name is None:
        name = os.environ.get("XPNET_BACKEND", "auto") or "auto"
    name = _normalise_name(name, from_env_name)
    from_env = device is None and bool(os.environ.get("XPNET_DEVICE"))
    if device is None:
        device = os.environ.get("XPNET_DEVICE") or None
    if name != "auto":
        return _make(name, device, from_env)
    if isinstance(device, str) and device.strip().lower() == "cpu":
        chosen, why = "numpy", "device 'cpu' asked for"
    else:
        ok, why = _cuda_status(_parse_device_index(device, "cuda") if device is not None else 0)
        chosen = "cupy" if ok else "numpy"
        if not ok and device is not None:
            raise BackendError(f"device: {_device_source(device, from_env)} asked for, but "
                               f"backend auto found no usable CUDA device ({why}); unset "
                               "XPNET_DEVICE (or set it to 'cpu') to run on NumPy")
    backend = _make(chosen, None if chosen == "numpy" else device, from_env)
    log.info("xpnet: backend auto -> %s (%s)", backend, why)
    return backend


def set_backend(name: str | None = None, device: str | int | None = None) -> Backend:
    """Select the backend used from now on and return it.

    Parameters
    ----------
    name : 'auto' | 'numpy' | 'cupy' | 'torch' | 'array_api_strict', or None to read
        ``XPNET_BACKEND`` (default 'auto': CuPy when a CUDA device can run kernels, else NumPy).
    device : backend-specific device, e.g. 'cuda:1' or 1 for CuPy, 'cpu' or 'cuda:0' for torch,
        'device1' for array_api_strict; None reads ``XPNET_DEVICE``, then the backend default.
        With 'auto', a device is honoured ('cpu' picks NumPy, 'cuda:N' needs CuPy) or refused,
        never ignored.

    An explicit name never falls back: a missing library or GPU raises :class:`BackendError`
    with the install command; a bad name or device raises ValueError (TypeError for a wrong
    type) naming the argument. A failed call leaves the previous selection unchanged.

    CuPy launches kernels on its *current* device, so selecting ``cuda:N`` also makes N the
    current CuPy device of the calling thread; xpnet's own allocations and transfers run inside
    the device's context (:func:`device_scope`), so they land on N regardless.
    """
    global _current
    backend = resolve_backend(name, device)
    if backend.name == "cupy":
        backend.device.use()
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


get_backend = current  # an alias, not a second function: xpnet itself says current()


def free_device_memory(backend: Backend) -> int | None:
    """Bytes free on ``backend``'s GPU (CuPy's pool cache counted as free), or None for a
    host backend. The loader asks this to decide whether a data set can live on the GPU."""
    if backend.name == "cupy":
        import cupy
        with backend.device:
            free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free + cupy.get_default_memory_pool().free_bytes())  # the cache is reusable
    if backend.name == "torch" and backend.device.type == "cuda":
        import torch
        free, _ = torch.cuda.mem_get_info(backend.device)
        return int(free)
    return None


def available_backends() -> dict[str, str]:
    """Map of backend name to version (or the reason it is unavailable), for ``xpnet info``.

    Changes nothing: neither xpnet's selection nor CuPy's current device.
    """
    out = {}
    for name in BACKENDS[1:]:
        try:
            out[name] = _make(name, None).version
        except (BackendError, ValueError, TypeError) as exc:
            out[name] = f"unavailable: {exc}"
    return out


def device_scope(device: Any) -> contextlib.AbstractContextManager:
    """A context in which CuPy allocates on ``device`` (a no-op for every other backend).

    array-api-compat ignores ``device=`` for CuPy's ``zeros``/``empty``/``full``/``ones``/
    ``arange`` (they follow CuPy's current device); xpnet wraps its own allocations in this.
    """
    if type(device).__module__.startswith("cupy"):
        return device  # cupy.cuda.Device is a context manager that restores the previous one
    return contextlib.nullcontext()


_DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "float16", "float32", "float64", "complex64", "complex128")


def _resolve_dtype(xp: Any, dtype: Any, backend_name: str) -> Any:
    """A namespace dtype from None, a dtype name or a dtype of the namespace."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype in _DTYPE_NAMES and hasattr(xp, dtype):
            return getattr(xp, dtype)
        known = [n for n in _DTYPE_NAMES if hasattr(xp, n)]
        raise ValueError(f"dtype: unknown dtype name {dtype!r} for backend {backend_name}; "
                         f"expected one of: {', '.join(known)}")
    for n in _DTYPE_NAMES:
        candidate = getattr(xp, n, None)
        if candidate is not None and _same_dtype(dtype, candidate):
            return candidate
    name = _dtype_name(dtype)  # a dtype of another library: numpy's float32 on torch, ...
    if name in _DTYPE_NAMES and hasattr(xp, name):
        return getattr(xp, name)
    raise TypeError(f"dtype: expected a dtype name such as 'float32' or a dtype of backend "
                    f"{backend_name}, got {type(dtype).__name__} {dtype!r}")


def _same_dtype(a: Any, b: Any) -> bool:
    if isinstance(a, (bool, int, float)):
        return False
    try:
        with warnings.catch_warnings():  # array_api_strict warns on cross-library comparisons
            warnings.simplefilter("ignore")
            return bool(a == b)
    except Exception:
        return False


def _dtype_name(dtype: Any) -> str | None:
    if isinstance(dtype, (bool, int, float)):
        return None
    if type(dtype).__module__.split(".")[0] in ("numpy", "builtins"):
        try:
            return np.dtype(dtype).name
        except TypeError:
            return None
    return str(dtype).rsplit(".", 1)[-1].strip("'\")")  # torch.float32, strict's DType


def to_device(x: Any, dtype: Any = None, backend: Backend | None = None) -> Any:
    """Move data (NumPy array, list, scalar, or any backend's array) to a backend's device.

    ``dtype`` may be a dtype name ('float32') or a namespace dtype. With ``dtype=None`` a NumPy
    array keeps its dtype and Python floats become float32. Arrays already on the backend are
    returned as they are (no copy) unless the dtype or device differs; an array on another
    device of the same library is copied there (between two GPUs too); an array of another
    library goes through the host (:func:`to_numpy`).

    Raises ValueError for an unknown dtype name or data that is not numeric, TypeError for a
    ``backend`` that is not a :class:`Backend` or a ``dtype`` that is not one.
    """
    if backend is not None and not isinstance(backend, Backend):
        raise TypeError(f"backend: expected an xpnet.Backend (from xpnet.set_backend or "
                        f"xpnet.current()) or None, got {type(backend).__name__} {backend!r}")
    b = backend or current()
    xp = b.xp
    dtype = _resolve_dtype(xp, dtype, b.name)
    if not _is_array_of(b, x):
        host = as_host(x, "x")
        foreign = array_api_compat.is_array_api_obj(x) and not isinstance(x, np.generic)
        if dtype is None and host.dtype.kind == "f" and not isinstance(x, np.ndarray) \
                and not foreign:
            dtype = xp.float32  # Python floats: xpnet's default, not NumPy's float64
        with device_scope(b.device):
            return xp.asarray(host, dtype=dtype, device=b.device)
    if array_api_compat.device(x) != b.device:
        if b.name == "cupy":
            with b.device:  # cupy.asarray would return x itself, still on the other GPU
                x = x.copy()
        else:
            x = array_api_compat.to_device(x, b.device)
    if dtype is not None and x.dtype != dtype:
        with device_scope(b.device):
            x = xp.astype(x, dtype)
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
    """Bring any supported array (or scalar, or list) back to the host as a NumPy array.

    The one explicit device-to-host transfer: CuPy and torch CUDA arrays are copied, a NumPy
    array is returned as it is. Raises TypeError for objects that are not numeric data.
    """
    return as_host(x, "x")


def as_host(x: Any, what: str = "x") -> np.ndarray:
    """The one rule for data handed to xpnet: host or device, it becomes a NumPy array.

    Accepts NumPy arrays (returned as they are, no copy), Python scalars and (nested) lists or
    tuples of numbers, and arrays of any backend on any device: CuPy, torch (CPU or CUDA) and
    array_api_strict arrays are copied to the host once. ``what`` names the argument in errors.

    Raises
    ------
    TypeError
        ``x`` is not numeric data (a string, a dict, None, an object array).
    ValueError
        ``x`` is a ragged nested list.
    """
    if isinstance(x, np.ndarray):
        host = x
    elif array_api_compat.is_cupy_array(x):
        host = x.get()
    elif array_api_compat.is_torch_array(x):
        host = x.detach().cpu().numpy()
    elif array_api_compat.is_array_api_obj(x) and \
            type(x).__module__.startswith("array_api_strict"):
        strict = importlib.import_module(type(x).__module__.split(".")[0])
        if x.device != strict.Device("CPU_DEVICE"):
            x = x.to_device(strict.Device("CPU_DEVICE"))
        host = np.asarray(x)
    else:
        if x is None or isinstance(x, (str, bytes, dict, set)):
            raise TypeError(f"{what}: expected a NumPy array, an array of an xpnet backend, a "
                            f"number or a list of numbers, got {type(x).__name__}")
        try:
            host = np.asarray(x)
        except ValueError as exc:
            raise ValueError(f"{what}: expected a rectangular (non-ragged) list of numbers, "
                             f"got a {type(x).__name__} that NumPy cannot stack ({exc})") from exc
    if host.dtype.kind not in "biufc":
        raise TypeError(f"{what}: expected numeric data, got {type(x).__name__} of dtype "
                        f"{host.dtype}")
    return host


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
