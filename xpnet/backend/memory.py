"""Host and device memory: where a backend's arrays live, how much a GPU has free, and the
host allocator setting that keeps freed memory for reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

__all__ = ["computes_on_host", "free_device_memory", "is_out_of_memory", "keep_freed_memory"]


def computes_on_host(name: str, device: Any) -> bool:
    """True when backend ``name``'s arrays on ``device`` live in host memory (NumPy,
    array_api_strict, torch on the CPU)."""
    return name in ("numpy", "array_api_strict") or (
        name == "torch" and getattr(device, "type", "") == "cpu")


def free_device_memory(backend: Any) -> int | None:
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


# Host allocator tuning. A training step allocates and frees the same few multi-megabyte arrays
# every step. glibc's malloc serves blocks above its mmap threshold with fresh mmap calls and
# trims the heap top after frees, so each step faults the same pages in again (BENCHMARKS.md
# measures the cost). Raising the mmap and trim thresholds once makes freed blocks reusable.
# Process-wide and glibc-only; XPNET_TUNE_MALLOC=0 leaves malloc alone.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 1 << 30
_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True if it took effect."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("XPNET_TUNE_MALLOC", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _tuned


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` says an allocation failed on any backend: NumPy's ``MemoryError``
    (CuPy's ``OutOfMemoryError`` is one too) or torch's ``OutOfMemoryError`` (a RuntimeError,
    matched by its class name so that nothing imports torch here)."""
    if isinstance(exc, MemoryError):
        return True
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)
