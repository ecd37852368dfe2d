"""Selection: which array namespace and device xpnet computes on.

The backend is chosen once (``XPNET_BACKEND`` or :func:`set_backend`) and read everywhere else
through :func:`current`. Each backend is one factory in :data:`_FACTORIES`; adding a backend
adds a factory here (and its fast paths to :mod:`xpnet.ops`).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .memory import computes_on_host, keep_freed_memory
from .probe import cuda_status

__all__ = ["BACKENDS", "Backend", "BackendError", "available_backends", "current",
           "resolve_backend", "set_backend"]

log = logging.getLogger("xpnet")

BACKENDS = ("auto", "numpy", "cupy", "torch", "array_api_strict")
TORCH_INSTALL = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
                 "  (the CPU build; the default index gives the CUDA build)")
STRICT_INSTALL = "pip install array-api-strict"


class BackendError(RuntimeError):
    """A backend was asked for that cannot run here (library or device missing)."""


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


def _make_numpy(device: Any, given: str) -> Backend:
    if device not in (None, "cpu"):
        raise ValueError(f"device: numpy runs on 'cpu' only, got {given}")
    return Backend("numpy", _compat("numpy"), "cpu", np.__version__)


def _make_cupy(device: Any, given: str) -> Backend:
    index = _parse_device_index(device, "cuda")
    ok, why = cuda_status(index)
    if not ok:
        raise BackendError(f"backend 'cupy' cannot run here: {why}")
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise BackendError(f"device: {given} does not exist; CuPy sees {count} CUDA "
                           f"device(s): " + ", ".join(f"cuda:{i}" for i in range(count)))
    return Backend("cupy", _compat("cupy"), cupy.cuda.Device(index), cupy.__version__)


def _make_torch(device: Any, given: str) -> Backend:
    try:
        import torch
    except ImportError as exc:
        raise BackendError(f"backend 'torch' is not installed ({exc}); install it with: "
                           f"{TORCH_INSTALL}") from exc
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
                               "sees no CUDA device (a CPU build, or no NVIDIA driver/GPU on "
                               "this machine); use device 'cpu' or a CUDA build of torch")
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= count:
            raise BackendError(f"device: {given} does not exist; torch sees {count} CUDA "
                               f"device(s)")
    return Backend("torch", _compat("torch"), dev, torch.__version__)


def _make_strict(device: Any, given: str) -> Backend:
    try:
        xp = importlib.import_module("array_api_strict")
    except ImportError as exc:
        raise BackendError(f"backend 'array_api_strict' is not installed ({exc}); "
                           f"install it with: {STRICT_INSTALL}") from exc
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


#: backend name -> factory(device, description of the device for errors) -> Backend
_FACTORIES: dict[str, Callable[[Any, str], Backend]] = {
    "numpy": _make_numpy, "cupy": _make_cupy, "torch": _make_torch,
    "array_api_strict": _make_strict,
}


def _make(name: str, device: Any, from_env: bool = False) -> Backend:
    """Build a Backend for an explicit name, raising BackendError if it cannot run here.

    Pure: nothing global changes (CuPy's current device included); :func:`set_backend`
    activates the result.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return factory(device, _device_source(device, from_env))


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
        ok, why = cuda_status(_parse_device_index(device, "cuda") if device is not None else 0)
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
    the device's context (:func:`xpnet.backend.device_scope`), so they land on N regardless.
    """
    global _current
    backend = resolve_backend(name, device)
    if backend.name == "cupy":
        backend.device.use()
    if computes_on_host(backend.name, backend.device):
        keep_freed_memory()  # stop re-faulting the same pages every training step
    _current = backend
    return backend


def current() -> Backend:
    """The selected backend, selecting from the environment on first use."""
    return _current if _current is not None else set_backend()


def set_compute_threads(count: int) -> None:
    """Give the current backend's own CPU kernels ``count`` threads. torch's convolutions and
    matrix products run on its intra-op pool, which the BLAS limits of threadpoolctl do not
    reach, so the thread policy sets it here (``torch.set_num_threads``) when the current
    backend is torch on the CPU. NumPy's products are the BLAS's (set by the caller), and
    CuPy and array_api_strict have no such pool: nothing to do for them."""
    backend = _current
    if backend is None or backend.name != "torch" or str(backend.device) != "cpu":
        return
    import torch
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


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
