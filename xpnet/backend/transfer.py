"""Transfers and device rules: data onto a backend's device, back to NumPy, and the errors for
arrays that live in different places."""

from __future__ import annotations

import contextlib
import importlib
import warnings
from typing import Any, cast

import array_api_compat
import numpy as np

from .selection import Backend, current

__all__ = ["DeviceMismatchError", "as_host", "check_same_device", "describe", "device_scope",
           "same_device", "to_device", "to_numpy"]


class DeviceMismatchError(ValueError):
    """Two arrays of one operation live in different namespaces or on different devices."""


def device_scope(device: Any) -> contextlib.AbstractContextManager[Any]:
    """A context in which CuPy allocates on ``device`` (a no-op for every other backend).

    array-api-compat ignores ``device=`` for CuPy's ``zeros``/``empty``/``full``/``ones``/
    ``arange`` (they follow CuPy's current device); xpnet wraps its own allocations in this.
    """
    if type(device).__module__.startswith("cupy"):
        # cupy.cuda.Device is a context manager that restores the previous one
        return cast(contextlib.AbstractContextManager[Any], device)
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
            name: str = np.dtype(dtype).name
            return name
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


def same_device(a: Any, b: Any) -> bool:
    """True when arrays a and b are of one array type on one device. Called on every step
    (layer inputs, optimizer slots): it reads the standard's ``.device`` attribute, which
    NumPy 2, CuPy, torch and array_api_strict arrays carry, and asks array-api-compat only
    for arrays without one (NumPy 1.x)."""
    if type(a) is not type(b):
        return False
    da, db = getattr(a, "device", None), getattr(b, "device", None)
    if da is None or db is None or callable(da):
        return bool(array_api_compat.device(a) == array_api_compat.device(b))
    return bool(da == db)


def check_same_device(a: Any, b: Any, a_name: str, b_name: str) -> None:
    """Raise DeviceMismatchError naming both sides when a and b cannot be combined."""
    if same_device(a, b):
        return
    da, db = describe(a), describe(b)
    if da == db:
        return
    raise DeviceMismatchError(
        f"{a_name} ({da}) and {b_name} ({db}) cannot be combined in one operation; move the "
        "data with xpnet.to_device(x), or the model with model.to_device(), first")
