"""The communicator: collectives over the processes of one job, the one-process job, and the
launcher detection that decides which one a process gets.

Launcher detection (:func:`launcher_world_size`), first match wins:

* ``XPNET_DISTRIBUTED=0`` -> one process, whatever the launcher; ``=1`` -> MPI always
  (a lone process then runs as an MPI singleton of size 1);
* otherwise MPI when one of these announces more than one process: ``OMPI_COMM_WORLD_SIZE``
  (Open MPI), ``PMI_SIZE`` (MPICH/Hydra, Intel MPI, Slurm ``srun --mpi=pmi2``),
  ``MV2_COMM_WORLD_SIZE`` (MVAPICH), ``SLURM_STEP_NUM_TASKS`` together with ``PMIX_RANK``
  (Slurm ``srun --mpi=pmix``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import validate

__all__ = ["CollectiveError", "Communicator", "RankRefused", "ReplicaMismatch", "SingleProcess",
           "device_for_local_rank", "launcher_world_size", "reset", "shard_bounds", "world"]

Array = Any
ENV_FLAG = "XPNET_DISTRIBUTED"
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


class CollectiveError(RuntimeError):
    """An error every rank raises at the same point (so only rank 0 needs to report it)."""


class ReplicaMismatch(CollectiveError):
    """Ranks hold different parameters where they must be identical."""


class RankRefused(CollectiveError):
    """Another rank refused to go on at a point every rank reaches together (its own check
    failed there); raised by the ranks whose own checks passed, naming that rank and its
    error, so that none waits for it."""


def launcher_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes the launcher announced (1 when none); reads no MPI library.

    ``XPNET_DISTRIBUTED`` overrides: '0' forces 1; '1' forces MPI (returns at least 1, the
    actual size comes from MPI). Any other value is refused.
    """
    env = os.environ if environ is None else environ
    flag = validate.env_choice(ENV_FLAG, env.get(ENV_FLAG, "").strip(),
                               {"0": "one process", "1": "MPI", "": "unset: detect the launcher"})
    if flag == "0":
        return 1
    sizes = [env.get(name, "") for name in SIZE_VARIABLES]
    if env.get("PMIX_RANK") is not None:
        sizes.append(env.get("SLURM_STEP_NUM_TASKS", ""))
    for text in sizes:
        if text.strip().isdigit() and int(text) > 1:
            return int(text)
    return 1


def _wanted(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return launcher_world_size(env) > 1 or env.get(ENV_FLAG, "").strip() == "1"


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

    def abort(self, code: int = 1, *, quiet: bool = False) -> None:
        """End every rank of the job now with exit status ``code``; ``quiet``: without the
        MPI library's own notice (for an interrupted run, whose one line is already out)."""
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


_world: Communicator | None = None


def world() -> Communicator:
    """The job's communicator: MPI when launched by an MPI launcher (see the module docstring),
    else :class:`SingleProcess`. Created once; mpi4py is imported only in the MPI case."""
    global _world
    if _world is None:
        if _wanted():
            from .mpi import MPICommunicator

            _world = MPICommunicator()
        else:
            _world = SingleProcess()
    return _world


def reset(comm: Communicator | None = None) -> None:
    """Replace the cached communicator (tests; a sub-communicator)."""
    global _world
    _world = comm


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
