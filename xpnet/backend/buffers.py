"""What a transport needs to know about an array: its library, and its memory as a host buffer
or a CUDA pointer. :mod:`xpnet.distributed` picks its transport from these, without naming an
array library itself."""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

__all__ = ["CudaBuffer", "array_library", "cuda_buffer", "host_view", "synchronize"]


def array_library(x: Any) -> str:
    """'numpy', 'cupy', 'torch', 'array_api_strict' or 'other': the library ``x`` belongs to."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if type(x).__module__.startswith("array_api_strict"):
        return "array_api_strict"
    return "other"


def host_view(x: Any) -> np.ndarray | None:
    """A NumPy array sharing ``x``'s memory (writes land in ``x``), or None when ``x`` is not a
    contiguous array in host memory (a GPU array, array_api_strict, a strided torch view)."""
    if isinstance(x, np.ndarray):
        return x if x.flags.c_contiguous else None
    if array_api_compat.is_torch_array(x) and x.device.type == "cpu" and x.is_contiguous():
        return x.detach().numpy()
    return None


class CudaBuffer(NamedTuple):
    """A CuPy array's memory: device pointer, element count, dtype name, contiguity, and the
    pointer of the stream its producers run on."""

    ptr: int
    size: int
    dtype: str
    contiguous: bool
    stream: int


def cuda_buffer(x: Any) -> CudaBuffer:
    """The :class:`CudaBuffer` of CuPy array ``x``."""
    import cupy

    return CudaBuffer(x.data.ptr, int(x.size), x.dtype.name, bool(x.flags.c_contiguous),
                      cupy.cuda.get_current_stream().ptr)


def synchronize(x: Any) -> None:
    """Wait until the work queued on CuPy array ``x``'s device is done (a library outside
    CuPy, such as a CUDA-aware MPI, does not see CuPy's stream)."""
    x.device.synchronize()
