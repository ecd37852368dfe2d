"""Threads and workspaces for the CPU fast paths: a shared thread pool, per-role reusable
arrays, and control of the BLAS libraries' own threads.

Used by :mod:`xpnet.ops` (the grid convolution's block copies and matmuls) and by
:mod:`xpnet.distributed` (ranks on one node share its cores).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from array_api_compat import device

from .backend import device_scope, set_compute_threads

__all__ = ["THREAD_VARIABLES", "Workspace", "adapt_threads", "choose_threads", "copy_threads",
           "in_threads", "other_load", "pinned_threads", "share_cores", "single_threaded_blas",
           "thread_scratch"]

log = logging.getLogger("xpnet")

Array = Any

#: environment variables through which a user sets a thread count
THREAD_VARIABLES = ("XPNET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


class Workspace:
    """Arrays a layer keeps from step to step, keyed by role.

    A training step allocates the same large arrays every step; above glibc's largest mmap
    threshold (32 MiB: DeepConvNet's column matrices reach 50 MB) every allocation is a fresh
    ``mmap`` whose pages fault in again. A workspace hands back the same array while shape,
    dtype and device stay the same. ``get`` returns (array, fresh): a fresh array is zero-filled
    when asked, a reused one holds whatever its last user wrote.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, Array] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: Any, *, xp: Any, like: Array,
            zero: bool = False) -> tuple[Array, bool]:
        """An array of ``shape`` for role ``key``. Without ``zero`` it is a view of the key's
        backing buffer whenever that is large enough (roles used one after another may share
        a key); with ``zero`` the buffer is reused only at the very same shape, so zeros that
        its users never overwrite stay zero."""
        shape = tuple(int(d) for d in shape)
        numel = 1
        for d in shape:
            numel *= d
        old = self._arrays.get(key)
        dev = device(like)
        if (old is not None and old.dtype == dtype and device(old) == dev
                and (self._shapes[key] == shape if zero else old.shape[0] >= numel)):
            return xp.reshape(old[:numel], shape), False
        self._arrays.pop(key, None)  # free the old one before allocating its successor
        with device_scope(dev):
            new = (xp.zeros if zero else xp.empty)((numel,), dtype=dtype, device=dev)
        self._arrays[key], self._shapes[key] = new, shape
        return xp.reshape(new, shape), True

    def clear(self) -> None:
        """Drop every kept array."""
        self._arrays.clear()
        self._shapes.clear()


_POOL: ThreadPoolExecutor | None = None
_SCRATCH = threading.local()


def thread_scratch() -> Workspace:
    """The calling thread's own Workspace (for block buffers that threads must not share)."""
    ws = getattr(_SCRATCH, "ws", None)
    if ws is None:
        ws = _SCRATCH.ws = Workspace()
    return ws


#: the thread count :func:`adapt_threads` chose last (None: it has not run, or left threads alone)
_ADAPTED: int | None = None


def copy_threads() -> int:
    """Threads for NumPy's large copies: the thread count the process asked for
    (``XPNET_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``), else the count
    :func:`adapt_threads` chose, else the usable cores; at most 8."""
    for var in ("XPNET_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), 8)
    if _ADAPTED is not None:
        return min(_ADAPTED, 8)
    return max(1, min(_cores(), 8))


def _user_threads() -> bool:
    """Whether the user set a thread count in one of :data:`THREAD_VARIABLES`."""
    return any(os.environ.get(v, "").strip() for v in THREAD_VARIABLES)


def pinned_threads() -> int | None:
    """The thread count the user set: the first of :data:`THREAD_VARIABLES` that holds a
    positive integer; None when none does."""
    for var in THREAD_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _own_running() -> int:
    """This process's runnable threads now (at least 1: the caller); a BLAS pool that still
    spins after its last call counts here, not as another process's load."""
    count = 0
    try:
        for task in Path("/proc/self/task").iterdir():
            try:
                # the state follows the parenthesised command name, which may hold spaces
                count += (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):
                continue
    except OSError:
        pass
    return max(count, 1)


#: instants sampled by :func:`other_load`, and the pause between them (seconds)
LOAD_SAMPLES, LOAD_SAMPLE_GAP = 5, 0.01


def other_load() -> float:
    """How many cores other processes keep busy now: the smaller of the 1-minute load average
    and the tasks runnable at this instant (``/proc/loadavg``) less this process's own. The
    average lags by a minute (it still counts a run that just ended); the instant count
    jumps, so it is the least of :data:`LOAD_SAMPLES` instants 10 ms apart: a task that wakes
    for a moment (a shell, a logger, a launcher) is gone at the next one, while a busy
    neighbour shows in every one and in the average. 0.0 where neither can be read."""
    try:
        running = None
        for i in range(LOAD_SAMPLES):
            if i:
                time.sleep(LOAD_SAMPLE_GAP)
            fields = Path("/proc/loadavg").read_text().split()
            now = int(fields[3].split("/")[0]) - _own_running()
            running = now if running is None else min(running, now)
        average = float(fields[0])
    except (OSError, IndexError, ValueError):
        try:
            return max(0.0, os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    return max(0.0, min(average, float(running or 0)))


def choose_threads(cores: int, others: float) -> int:
    """The thread count for a run that shares ``cores`` with ``others`` cores' worth of other
    work: the cores left free (rounded to the nearest whole core), at least 1. A thread whose
    core another process holds stalls every BLAS call that waits for it, so fewer threads
    than cores is faster as soon as one core is taken."""
    return max(1, min(cores, cores - int(others + 0.5)))


def adapt_threads(saved: int | None = None) -> int | None:
    """Fit the BLAS and copy thread counts to the cores free now (:func:`choose_threads` of
    :func:`other_load`); called at the start of training. Returns the count chosen.

    ``saved`` is the count a resumed run was trained with (its checkpoint keeps it): the
    thread count changes the rounding, so it is reused instead of the load's choice, and the
    resumed run goes on exactly as the uninterrupted one. A thread count the user set in one
    of :data:`THREAD_VARIABLES` is left alone (returns None); if it differs from ``saved``,
    one line is logged (``logging``, logger ``xpnet``, level INFO: quiet unless configured)
    that the resume may then differ from an uninterrupted run by rounding. A BLAS that
    threadpoolctl cannot reach keeps its threads; the copies still follow."""
    global _ADAPTED
    if _user_threads():
        _ADAPTED = None
        pinned = pinned_threads()
        if saved is not None and pinned != saved:
            log.info("xpnet: resuming a run trained with %d threads with %s set by the user; "
                     "the result may differ from an uninterrupted run by rounding (unset "
                     "the thread variables, or set %d, for an exact resume)", saved,
                     f"{pinned} threads" if pinned else "a thread count", saved)
        return None
    threads = saved if saved is not None else choose_threads(_cores(), other_load())
    if threads != _ADAPTED:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=threads, user_api="blas")  # stays in force
        except ImportError:  # BLAS threads stay as they are; copies still follow
            pass
        _ADAPTED = threads
    set_compute_threads(threads)  # torch's own pool, on the torch backend
    return threads


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_threads(fn: Callable[[int], None], count: int, threads: int | None = None) -> None:
    """Run fn(0), ..., fn(count - 1) on ``threads`` threads (default :func:`copy_threads`):
    the calling thread and pool workers take the next index as each finishes, so a thread
    that loses its core to another process delays only the items it holds. Useful where fn
    releases the GIL (NumPy copies and matmuls on large arrays)."""
    global _POOL
    threads = min(copy_threads() if threads is None else threads, count)
    if threads <= 1:
        for i in range(count):
            fn(i)
        return
    if _POOL is None or _POOL._max_workers < threads - 1:
        _POOL = ThreadPoolExecutor(max_workers=max(threads - 1, copy_threads()),
                                   thread_name_prefix="xpnet")
    indices = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            fn(i)

    helpers = [_POOL.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for f in helpers:
            f.result()


class single_threaded_blas:
    """Context: the BLAS libraries NumPy uses run single-threaded inside (through
    threadpoolctl, when installed; otherwise a no-op), restored on exit. ``controlled`` says
    whether it could."""

    _controller: Any = False  # False: not looked up yet; None: unavailable

    def __init__(self, active: bool):
        self.active = active
        self.controlled = False
        self.saved: list[tuple[Any, int]] = []

    @classmethod
    def _libs(cls) -> list[Any]:
        if cls._controller is False:
            try:
                from threadpoolctl import ThreadpoolController
                cls._controller = ThreadpoolController().select(user_api="blas")
            except Exception:  # not installed, or an unknown BLAS: leave threads alone
                cls._controller = None
        return list(cls._controller.lib_controllers) if cls._controller is not None else []

    def __enter__(self) -> single_threaded_blas:
        self.controlled = False
        if self.active:
            libs = self._libs()
            self.controlled = bool(libs)
            for lib in libs:
                n = lib.num_threads
                if n != 1:
                    lib.set_num_threads(1)
                    self.saved.append((lib, n))
        return self

    def __exit__(self, *exc: Any) -> None:
        for lib, n in self.saved:
            lib.set_num_threads(n)
        self.saved.clear()


def share_cores(local_size: int) -> int | None:
    """Give each of the ``local_size`` processes on this node its share of the cores.

    Every rank's BLAS and xpnet's copy threads would otherwise each use all cores and
    oversubscribe them. Like torchrun (which sets OMP_NUM_THREADS=1), a rank then gets
    ``cores // local_size`` threads (at least 1): the BLAS pools through threadpoolctl, xpnet's
    copies through ``XPNET_NUM_THREADS``. A thread count the user set in one of
    :data:`THREAD_VARIABLES` is left alone. Returns the count set, or None.
    """
    if local_size <= 1 or any(os.environ.get(v) for v in THREAD_VARIABLES):
        return None
    threads = max(1, _cores() // local_size)
    os.environ["XPNET_NUM_THREADS"] = str(threads)  # read by copy_threads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS threads stay as they are
        return threads
    threadpool_limits(limits=threads)  # a call, not a context: it stays in force
    return threads
