"""How an array is summed over MPI ranks: one transport per array library, in one table.

- host memory (NumPy, torch on the CPU): mpi4py's buffer interface on the array's own memory
  (zero-copy, no pickling);
- CuPy: NCCL (:mod:`.nccl`; the unique id is broadcast over MPI; one GPU per local rank), or
  straight to MPI when ``XPNET_CUDA_AWARE_MPI=1`` says the MPI is CUDA-aware;
- anything else (array_api_strict, torch on CUDA, a strided view): through a host copy.

Adding an array library adds one entry to :data:`TRANSPORTS`; what the transport needs to know
about an array comes from :mod:`xpnet.backend.buffers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from ..backend import to_numpy
from ..backend.buffers import array_library, host_view, synchronize

if TYPE_CHECKING:
    from .mpi import MPICommunicator

__all__ = ["TRANSPORTS", "allreduce_"]

Array = Any


def _via_host(comm: MPICommunicator, buf: Array) -> Array:
    host = np.array(to_numpy(buf), copy=True)  # correctness, not speed
    comm.comm.Allreduce(comm.MPI.IN_PLACE, host, op=comm.MPI.SUM)
    xp = array_api_compat.array_namespace(buf)
    return xp.asarray(host, device=array_api_compat.device(buf))


def _in_host_memory(comm: MPICommunicator, buf: Array) -> Array:
    view = host_view(buf)
    if view is None:
        return _via_host(comm, buf)
    comm.comm.Allreduce(comm.MPI.IN_PLACE, view, op=comm.MPI.SUM)
    return buf


def _on_gpu(comm: MPICommunicator, buf: Array) -> Array:
    if comm.cuda_aware:
        synchronize(buf)  # MPI does not see CuPy's stream
        comm.comm.Allreduce(comm.MPI.IN_PLACE, buf, op=comm.MPI.SUM)
        return buf
    return comm.nccl().allreduce_(buf)


#: array library (:func:`xpnet.backend.buffers.array_library`) -> transport(comm, buf) -> sum
TRANSPORTS: dict[str, Callable[[MPICommunicator, Array], Array]] = {
    "numpy": _in_host_memory, "torch": _in_host_memory, "cupy": _on_gpu,
}


def allreduce_(comm: MPICommunicator, buf: Array) -> Array:
    """Sum ``buf`` over the ranks of MPI communicator ``comm`` with its library's transport."""
    return TRANSPORTS.get(array_library(buf), _via_host)(comm, buf)
