"""Collectives over MPI through mpi4py (imported only when a communicator is built)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..threads import share_cores
from . import transports
from .communicator import ENV_FLAG, Communicator
from .nccl import NcclCommunicator

__all__ = ["MPICommunicator"]

Array = Any


class MPICommunicator(Communicator):
    """Collectives on ``MPI.COMM_WORLD`` (or a given communicator). Arrays are summed by
    their library's transport (:mod:`.transports`); host values and broadcasts go through
    mpi4py's buffer interface, never pickled."""

    def __init__(self, comm: Any = None):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            from ..backend.hints import install_command

            raise ImportError(f"distributed training needs mpi4py ({exc}); install it with: "
                              f"{install_command('mpi')} (mpi4py and the MPICH runtime; see "
                              f"README); or set {ENV_FLAG}=0 to run one process") from exc
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.threads = share_cores(self.local_size)
        self._nccl: NcclCommunicator | None = None
        self.cuda_aware = os.environ.get("XPNET_CUDA_AWARE_MPI", "") == "1"

    def nccl(self) -> NcclCommunicator:
        """One NCCL communicator per job, its unique id created on rank 0 and sent over MPI."""
        if self._nccl is None:
            self._nccl = NcclCommunicator(self.size, self.rank,
                                          lambda uid: self.comm.bcast(uid, root=0))
        return self._nccl

    def allreduce_(self, buf: Array) -> Array:
        if self.size == 1:
            return buf
        return transports.allreduce_(self, buf)

    def allreduce_host(self, values: Sequence[float]) -> list[float]:
        buf = np.asarray(values, dtype=np.float64).copy()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return [float(v) for v in buf]

    def broadcast_host(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        layout = [(k, v.shape, v.dtype.str) for k, v in arrays.items()]
        layout = self.comm.bcast(layout if self.is_root else None, root=0)
        out: dict[str, np.ndarray] = {}
        for dtype in dict.fromkeys(d for _, _, d in layout):
            keys = [(k, s) for k, s, d in layout if d == dtype]
            n = sum(int(np.prod(s)) for _, s in keys)
            buf = np.empty(n, dtype=np.dtype(dtype))
            if self.is_root and keys:
                np.concatenate([arrays[k].reshape(-1) for k, _ in keys], out=buf)
            self.comm.Bcast(buf, root=0)
            off = 0
            for k, s in keys:
                size = int(np.prod(s))
                out[k] = buf[off:off + size].reshape(s).copy()
                off += size
        return {k: out[k] for k, _, _ in layout}

    def broadcast_object(self, obj: Any) -> Any:
        return self.comm.bcast(obj if self.is_root else None, root=0)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1, *, quiet: bool = False) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if quiet:  # the MPI library's own notice ("Abort(130) on node 0 ...") is not shown
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        self.comm.Abort(code)
        os._exit(code)  # a launcher already ending the job (it got the Ctrl-C) can return
