"""NCCL through CuPy's binding (``cupy.cuda.nccl``): the GPU transport for CuPy arrays.

CuPy ships the binding but not NCCL itself; without the ``nvidia-nccl-cu12``/``-cu13`` wheel
(which xpnet's cupy extras bring) ``cupy.cuda.nccl.available`` is False and the module has no
``NcclCommunicator``. :func:`load_nccl` turns that into :class:`NcclUnavailableError`, which
names the package to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backend import BackendError
from ..backend.buffers import cuda_buffer
from ..backend.hints import cupy_cuda_major, install_command

__all__ = ["NcclCommunicator", "NcclUnavailableError", "load_nccl"]

Array = Any


class NcclUnavailableError(BackendError):
    """CuPy arrays are to be reduced over NCCL, but CuPy's NCCL binding cannot run here."""


def _install_hint() -> str:
    major = cupy_cuda_major()
    if major is None:
        wheel = "nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 (CUDA 13), matching your CuPy"
        extra = f"{install_command('cupy12')} / {install_command('cupy13')}"
    else:
        wheel, extra = f"nvidia-nccl-cu{major}", install_command(f"cupy{major}")
    return (f"install NCCL for CuPy: pip install {wheel} (or {extra}, which brings it); or, "
            "with a CUDA-aware MPI, set XPNET_CUDA_AWARE_MPI=1")


def load_nccl() -> Any:
    """CuPy's NCCL module, or :class:`NcclUnavailableError` naming the package to install."""
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise NcclUnavailableError(f"NCCL allreduce: CuPy's NCCL binding cannot be imported "
                                   f"({exc}); {_install_hint()}") from exc
    if not getattr(nccl, "available", True) or not hasattr(nccl, "NcclCommunicator"):
        raise NcclUnavailableError("NCCL allreduce: CuPy finds no NCCL library "
                                   "(cupy.cuda.nccl.available is False, no NcclCommunicator); "
                                   f"{_install_hint()}")
    return nccl


class NcclCommunicator:
    """One NCCL communicator over ``size`` ranks; ``share_id`` gives every rank rank 0's
    unique id (an MPI broadcast; the identity for one rank)."""

    def __init__(self, size: int, rank: int, share_id: Callable[[Any], Any] = lambda uid: uid):
        self._nccl = load_nccl()
        uid = share_id(self._nccl.get_unique_id() if rank == 0 else None)
        self._comm = self._nccl.NcclCommunicator(size, uid, rank)
        self._types = {"float16": self._nccl.NCCL_FLOAT16, "float32": self._nccl.NCCL_FLOAT32,
                       "float64": self._nccl.NCCL_FLOAT64, "int32": self._nccl.NCCL_INT32,
                       "int64": self._nccl.NCCL_INT64}

    def allreduce_(self, buf: Array, out: Array | None = None) -> Array:
        """Sum CuPy array ``buf`` over the ranks on CuPy's current stream, in place or into
        ``out`` (same shape and dtype); returns the array holding the sum."""
        b = cuda_buffer(buf)
        o = b if out is None else cuda_buffer(out)
        if b.dtype not in self._types or not b.contiguous or not o.contiguous \
                or (o.dtype, o.size) != (b.dtype, b.size):
            raise TypeError(f"NCCL allreduce: expected contiguous arrays of "
                            f"{', '.join(self._types)} (out like buf), got {b.dtype} "
                            f"(contiguous={b.contiguous})"
                            + ("" if out is None else f" and out {o.dtype} of {o.size} elements "
                               f"(contiguous={o.contiguous})"))
        self._comm.allReduce(b.ptr, o.ptr, b.size, self._types[b.dtype], self._nccl.NCCL_SUM,
                             b.stream)
        return buf if out is None else out
