"""Host allocator tuning: keep freed memory instead of returning it to the OS.

A training step allocates and frees the same few multi-megabyte arrays every step. glibc's
malloc serves blocks above its mmap threshold with fresh ``mmap`` calls and trims the heap top
after frees, so each step faults the same pages in again: on the 2-core CI machine that was
25-30% of a SimpleConvNet step (20.9 -> 14.7 ms median). Raising the mmap and trim thresholds
once makes freed blocks reusable. PyTorch's reference numbers show the same effect
(``../shared/bench/RESULTS.md``, "Noise").

This is process-wide and glibc-only; set ``XPNET_TUNE_MALLOC=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 1 << 30
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True if it took effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
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
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _done
