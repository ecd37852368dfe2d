"""Backends: the only package that names a concrete array library (with :mod:`xpnet.ops`).

Where each concern lives:

- :mod:`~xpnet.backend.selection`: the factories (one per backend), ``set_backend``,
  ``current``, ``resolve_backend``, ``available_backends``;
- :mod:`~xpnet.backend.probe`: can CuPy run here (driver, kernel, cuRAND, cuBLAS), which devices
  each library sees;
- :mod:`~xpnet.backend.hints`: install commands that fit how xpnet was installed;
- :mod:`~xpnet.backend.transfer`: ``to_device``, ``to_numpy``, ``as_host``, device rules;
- :mod:`~xpnet.backend.memory`: host or device memory, free GPU memory, the host allocator;
- :mod:`~xpnet.backend.buffers`: an array's memory as a transport sees it;
- :mod:`~xpnet.backend.random`: device random kernels.

Adding a backend: a factory in ``selection``, its transfers in ``transfer``/``buffers``, its
fast paths in :mod:`xpnet.ops` (and a device random kernel in ``random`` where it has one).
"""

from .memory import free_device_memory, is_out_of_memory
from .probe import cuda_status, explain_cuda_error
from .selection import (
    BACKENDS,
    Backend,
    BackendError,
    available_backends,
    current,
    resolve_backend,
    set_backend,
    set_compute_threads,
)
from .transfer import (
    DeviceMismatchError,
    as_host,
    check_same_device,
    describe,
    device_scope,
    same_device,
    to_device,
    to_numpy,
)

__all__ = [
    "BACKENDS", "Backend", "BackendError", "DeviceMismatchError", "as_host", "available_backends",
    "check_same_device", "cuda_status", "current", "describe", "device_scope",
    "explain_cuda_error", "free_device_memory", "is_out_of_memory", "resolve_backend",
    "same_device", "set_backend", "set_compute_threads", "to_device", "to_numpy",
]
