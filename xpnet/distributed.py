"""Data-parallel communication: MPI through mpi4py, NCCL through CuPy.

This is the only module that names mpi4py or NCCL (as :mod:`xpnet.ops` is for array libraries).
Nothing here is imported or initialised unless the process was started by an MPI launcher (or
``XPNET_DISTRIBUTED=1``): a plain ``python train.py`` gets :class:`SingleProcess`, whose
collectives return at once, and never imports mpi4py.

Launcher detection (:func:`launcher_world_size`), first match wins:

* ``XPNET_DISTRIBUTED=0`` -> one process, whatever the launcher; ``=1`` -> MPI always
  (a lone process then runs as an MPI singleton of size 1);
* otherwise MPI when one of these announces more than one process: ``OMPI_COMM_WORLD_SIZE``
  (Open MPI), ``PMI_SIZE`` (MPICH/Hydra, Intel MPI, Slurm ``srun --mpi=pmi2``),
  ``MV2_COMM_WORLD_SIZE`` (MVAPICH), ``SLURM_STEP_NUM_TASKS`` together with ``PMIX_RANK``
  (Slurm ``srun --mpi=pmix``).

Transports, chosen per array: NumPy and torch-CPU arrays go through mpi4py's buffer interface
(zero-copy, no pickling); CuPy arrays through NCCL (``cupy.cuda.nccl``; the unique id is
broadcast over MPI; one GPU per local rank), or straight to MPI when ``XPNET_CUDA_AWARE_MPI=1``
says the MPI is CUDA-aware; anything else (array_api_strict, torch on CUDA) through a host copy.
The CuPy/NCCL path has not been run by the test suite (no GPU there): see
``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from .backend import to_numpy

__all__ = ["CollectiveError", "Communicator", "GradientAverager", "ReplicaMismatch",
           "SingleProcess", "abort_on_error", "launcher_world_size", "report_and_abort", "reset",
           "world"]

Array = Any
ENV_FLAG = "XPNET_DISTRIBUTED"
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
MPI_INSTALL = 'pip install "xpnet[mpi]"  (mpi4py and the MPICH runtime; see README)'


class CollectiveError(RuntimeError):
    """An error every rank raises at the same point (so only rank 0 needs to report it)."""


class ReplicaMismatch(CollectiveError):
    """Ranks hold different parameters where they must be identical."""


def launcher_world_size(environ: dict[str, str] | None = None) -> int:
    """The number of processes the launcher announced (1 when none); reads no MPI library.

    ``XPNET_DISTRIBUTED`` overrides: '0' forces 1; '1' forces MPI (returns at least 1, the
    actual size comes from MPI). Any other value is refused.
    """
    env = os.environ if environ is None else environ
    flag = env.get(ENV_FLAG, "").strip()
    if flag not in ("", "0", "1"):
        raise ValueError(f"{ENV_FLAG}={flag!r}: expected '0' (one process), '1' (MPI) or unset "
                         "(detect the launcher)")
    if flag == "0":
        return 1
    sizes = [env.get(name, "") for name in SIZE_VARIABLES]
    if env.get("PMIX_RANK") is not None:
        sizes.append(env.get("SLURM_STEP_NUM_TASKS", ""))
    for text in sizes:
        if text.strip().isdigit() and int(text) > 1:
            return int(text)
    return 1


def _wanted(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return launcher_world_size(env) > 1 or env.get(ENV_FLAG, "").strip() == "1"


def _host_copy(x: Array) -> np.ndarray:
    return np.array(to_numpy(x), copy=True)


class Communicator:
    """Collectives over the processes of one job. This base class is the one-process job.

    Every method is collective: all ranks call it in the same order with arrays of the same
    shapes and dtypes.
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that prints, plots and writes files."""
        return self.rank == 0

    def allreduce_(self, buf: Array) -> Array:
        """Sum ``buf`` over all ranks; in place where the transport allows. Returns the sum."""
        return buf

    def allreduce_host(self, values: Sequence[float]) -> list[float]:
        """Sum a few host numbers (counts, loss sums) over all ranks, in float64."""
        return [float(v) for v in values]

    def broadcast_host(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rank 0's host arrays on every rank (shapes/dtypes sent first, then one buffer per
        dtype; the arrays themselves are never pickled)."""
        return {k: np.array(v, copy=True) for k, v in arrays.items()}

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's small picklable object (metadata, RNG states) on every rank."""
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's small picklable object, in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now with exit status ``code``."""
        sys.stderr.flush()
        os._exit(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------------ model helpers
    def broadcast_module(self, model: Any) -> None:
        """Give every rank rank 0's parameters and buffers (running statistics)."""
        if self.size == 1:
            return
        model.load_state_dict(self.broadcast_host(model.state_dict()))

    def broadcast_optimizer(self, optimizer: Any) -> None:
        """Give every rank rank 0's optimizer state (step count, lr, moment slots)."""
        if self.size == 1:
            return
        state = optimizer.state_dict()
        flat = {f"{n}/{k}": v for n, slots in state["state"].items() for k, v in slots.items()}
        meta = self.broadcast_object({**{k: v for k, v in state.items() if k != "state"},
                                      "keys": list(flat)})
        arrays = self.broadcast_host(flat if self.is_root else {})
        slots: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            name, slot = key.split("/", 1)
            slots.setdefault(name, {})[slot] = value
        del meta["keys"]
        optimizer.load_state_dict({**meta, "state": slots})

    def check_identical(self, model: Any, where: str = "") -> str:
        """Raise :class:`ReplicaMismatch` unless every rank holds the same parameters and
        buffers (a SHA-256 of their bytes); returns the digest."""
        h = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
        digest = h.hexdigest()
        digests = self.allgather_object(digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ReplicaMismatch(f"parameters differ between ranks{' ' + where if where else ''}"
                                  f": ranks {differ} do not match rank 0 (checksums "
                                  f"{', '.join(d[:12] for d in digests)}); every rank must start "
                                  "from the same weights (broadcast them) and apply the same "
                                  "averaged update")
        return digest


class SingleProcess(Communicator):
    """World size 1: every collective is the identity, mpi4py is never imported."""


THREAD_VARIABLES = ("XPNET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


def share_cores(local_size: int) -> int | None:
    """Give each of the ``local_size`` ranks on this node its share of the cores.

    Every rank's BLAS and xpnet's copy threads would otherwise each use all cores: 2 ranks on
    2 cores ran 10x slower than one process. Like torchrun (which sets OMP_NUM_THREADS=1), a
    rank then gets ``cores // local_size`` threads (at least 1): the BLAS pools through
    threadpoolctl, xpnet's copies through ``XPNET_NUM_THREADS``. A thread count the user set
    in one of :data:`THREAD_VARIABLES` is left alone. Returns the count set, or None.
    """
    if local_size <= 1 or any(os.environ.get(v) for v in THREAD_VARIABLES):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // local_size)
    os.environ["XPNET_NUM_THREADS"] = str(threads)  # read by xpnet.ops.copy_threads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS threads stay as they are
        return threads
    threadpool_limits(limits=threads)  # a call, not a context: it stays in force
    return threads


class MPICommunicator(Communicator):
    """Collectives on ``MPI.COMM_WORLD`` (or a given communicator)."""

    def __init__(self, comm: Any = None):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(f"distributed training needs mpi4py ({exc}); install it with: "
                              f"{MPI_INSTALL}; or set {ENV_FLAG}=0 to run one process") from exc
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.threads = share_cores(self.local_size)
        self._nccl_comm: Any = None
        self.cuda_aware = os.environ.get("XPNET_CUDA_AWARE_MPI", "") == "1"

    # ------------------------------------------------------------------ transports
    def allreduce_(self, buf: Array) -> Array:
        MPI = self._MPI
        if self.size == 1:
            return buf
        if isinstance(buf, np.ndarray):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return buf
        if array_api_compat.is_torch_array(buf) and buf.device.type == "cpu" \
                and buf.is_contiguous():
            self.comm.Allreduce(MPI.IN_PLACE, buf.detach().numpy(), op=MPI.SUM)  # a view
            return buf
        if array_api_compat.is_cupy_array(buf):
            if self.cuda_aware:
                buf.device.synchronize()  # MPI does not see CuPy's stream
                self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                return buf
            return self._nccl_allreduce(buf)
        host = _host_copy(buf)  # array_api_strict, torch on CUDA: correctness, not speed
        self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        xp = array_api_compat.array_namespace(buf)
        return xp.asarray(host, device=array_api_compat.device(buf))

    def _nccl(self) -> Any:
        """One NCCL communicator per job, its unique id created on rank 0 and sent over MPI."""
        if self._nccl_comm is None:
            from cupy.cuda import nccl
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.comm.bcast(uid, root=0)
            self._nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl_comm

    def _nccl_allreduce(self, buf: Array) -> Array:
        import cupy
        from cupy.cuda import nccl
        types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
                 "float64": nccl.NCCL_FLOAT64, "int32": nccl.NCCL_INT32,
                 "int64": nccl.NCCL_INT64}
        if buf.dtype.name not in types or not buf.flags.c_contiguous:
            raise TypeError(f"NCCL allreduce: expected a contiguous array of "
                            f"{', '.join(types)}, got {buf.dtype} "
                            f"(contiguous={buf.flags.c_contiguous})")
        stream = cupy.cuda.get_current_stream()
        self._nccl().allReduce(buf.data.ptr, buf.data.ptr, buf.size, types[buf.dtype.name],
                               nccl.NCCL_SUM, stream.ptr)
        return buf

    def allreduce_host(self, values: Sequence[float]) -> list[float]:
        buf = np.asarray(values, dtype=np.float64).copy()
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
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

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


_world: Communicator | None = None


def world() -> Communicator:
    """The job's communicator: MPI when launched by an MPI launcher (see the module docstring),
    else :class:`SingleProcess`. Created once; mpi4py is imported only in the MPI case."""
    global _world
    if _world is None:
        _world = MPICommunicator() if _wanted() else SingleProcess()
    return _world


def reset(comm: Communicator | None = None) -> None:
    """Replace the cached communicator (tests; a sub-communicator)."""
    global _world
    _world = comm


@contextlib.contextmanager
def abort_on_error(comm: Communicator | None = None) -> Iterator[Communicator]:
    """Run a block so that an exception on any rank ends every rank (no hang).

    The failing rank prints its traceback (prefixed with its rank) and calls ``Abort(1)``, which
    ends the whole job non-zero; ranks waiting in a collective are killed, so the error is shown
    once (see :func:`report_and_abort` for errors all ranks raise together).
    ``SystemExit(0)`` and normal completion pass through.
    """
    c = comm or world()
    try:
        yield c
    except SystemExit as exc:
        if c.size == 1 or exc.code in (0, None):
            raise
        report_and_abort(c, exc)
    except BaseException as exc:
        if c.size == 1:
            raise
        report_and_abort(c, exc)


ABORT_GRACE_SECONDS = 1.0  # time for the launcher to forward the error before Abort


def report_and_abort(c: Communicator, exc: BaseException, text: str | None = None) -> None:
    """Print the error once and end the job. Rank 0 reports at once; another rank first waits
    a moment, so that an error every rank hits at the same point (bad data, a mismatch) is
    shown by rank 0 alone, whose Abort ends the waiting ranks; a :class:`CollectiveError` is
    never printed by them. ``text`` replaces the traceback (a one-line message)."""
    if not c.is_root:
        time.sleep(5.0 if isinstance(exc, CollectiveError) else 2.0)
    code = 1
    if isinstance(exc, SystemExit):  # sys.exit(n) / argparse: its message is already out
        code = exc.code if isinstance(exc.code, int) else 1
    elif c.is_root or not isinstance(exc, CollectiveError):
        if text is None:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"[rank {c.rank}/{c.size}] {text.rstrip()}\n")
        sys.stderr.flush()
        # the launcher forwards a rank's output asynchronously: an immediate Abort can tear the
        # job down before the message reaches the user (seen 1 run in 4 under mpiexec)
        time.sleep(ABORT_GRACE_SECONDS)
    c.abort(code)


@dataclass
class _Bucket:
    dtype: str
    names: list[str]
    sizes: list[int]
    shapes: list[tuple[int, ...]]
    buf: Array = None


class GradientAverager:
    """A gradient hook that averages ``param.grad`` over all ranks before the optimizer update.

    Gradients are packed into one contiguous buffer per dtype, or into buckets of at most
    ``bucket_bytes`` (a larger parameter gets a bucket of its own), and each buffer is summed
    with one ``Allreduce`` per step: never one message per parameter, never pickled. After the
    hook, each ``param.grad`` is a view of its bucket (valid until the next step).

    ``scale`` multiplies the sum (default ``1/size``: the mean). ``stats`` counts calls,
    Allreduce messages, bytes and host seconds inside the Allreduce calls, for benchmarks (on
    CPU that includes waiting for the slowest rank; with NCCL it is the launch only, the
    reduction itself running on the CUDA stream).

    Use ``optimizer.register_grad_hook(GradientAverager(comm))``, or :meth:`attach`.
    """

    def __init__(self, comm: Communicator | None = None, *, bucket_bytes: int | None = None):
        if bucket_bytes is not None and (isinstance(bucket_bytes, bool)
                                         or not isinstance(bucket_bytes, int)
                                         or bucket_bytes <= 0):
            raise ValueError(f"bucket_bytes: expected a positive integer or None (one buffer "
                             f"per dtype), got {bucket_bytes!r}")
        self.comm = comm or world()
        self.bucket_bytes = bucket_bytes
        self.scale = 1.0 / self.comm.size
        self._buckets: list[_Bucket] | None = None
        self._layout: tuple | None = None
        self.stats = {"steps": 0, "messages": 0, "bytes": 0, "seconds": 0.0}

    @classmethod
    def attach(cls, optimizer: Any, comm: Communicator | None = None, **kw: Any
               ) -> GradientAverager:
        """Register a new averager on ``optimizer`` and return it."""
        hook = cls(comm, **kw)
        optimizer.register_grad_hook(hook)
        return hook

    def _plan(self, params: dict[str, Any]) -> list[_Bucket]:
        buckets: list[_Bucket] = []
        open_by_dtype: dict[str, _Bucket] = {}
        for name, p in params.items():
            g = p.grad
            dtype = str(g.dtype)
            size = int(np.prod(tuple(g.shape)))
            nbytes = size * _itemsize(g)
            b = open_by_dtype.get(dtype)
            if b is None or (self.bucket_bytes is not None and b.sizes and
                             (sum(b.sizes) * _itemsize(g) + nbytes) > self.bucket_bytes):
                b = _Bucket(dtype, [], [], [])
                buckets.append(b)
                open_by_dtype[dtype] = b
            b.names.append(name)
            b.sizes.append(size)
            b.shapes.append(tuple(g.shape))
        return buckets

    def buckets(self) -> list[tuple[str, int]]:
        """(dtype, element count) of each bucket, once the first step has planned them."""
        return [(b.dtype, sum(b.sizes)) for b in self._buckets or []]

    def __call__(self, params: dict[str, Any]) -> None:
        if self.comm.size == 1:
            return
        layout = tuple((n, str(p.grad.dtype), tuple(p.grad.shape)) for n, p in params.items())
        if layout != self._layout:
            self._buckets, self._layout = self._plan(params), layout
        for b in self._buckets:
            first = params[b.names[0]].grad
            xp = array_api_compat.array_namespace(first)
            total = sum(b.sizes)
            if b.buf is None or b.buf.shape[0] != total:
                b.buf = xp.empty((total,), dtype=first.dtype,
                                 device=array_api_compat.device(first))
            off = 0
            for name, size in zip(b.names, b.sizes):
                b.buf[off:off + size] = xp.reshape(params[name].grad, (-1,))
                off += size
            t0 = time.perf_counter()
            out = self.comm.allreduce_(b.buf)
            self.stats["seconds"] += time.perf_counter() - t0
            self.stats["messages"] += 1
            self.stats["bytes"] += total * _itemsize(first)
            if self.scale != 1.0:
                out *= self.scale
            b.buf = out
            off = 0
            for name, size, shape in zip(b.names, b.sizes, b.shapes):
                params[name].replace_grad(xp.reshape(out[off:off + size], shape))
                off += size
        self.stats["steps"] += 1


def _itemsize(x: Array) -> int:
    dtype = x.dtype
    size = getattr(dtype, "itemsize", None)
    if size is None:
        xp = array_api_compat.array_namespace(x)
        info = xp.finfo(dtype) if xp.isdtype(dtype, "real floating") else xp.iinfo(dtype)
        size = info.bits // 8
    return int(size)


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous share of ``n`` items (earlier ranks get the
    remainder: sizes differ by at most one)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def device_for_local_rank(comm: Communicator | None = None) -> str:
    """'cuda:<local rank>': one GPU per process on each node (pass to ``set_backend``)."""
    c = comm or world()
    return f"cuda:{c.local_rank}"
