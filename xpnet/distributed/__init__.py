"""Data-parallel communication: the only package that names MPI (mpi4py) or NCCL.

Nothing here is imported or initialised unless the process was started by an MPI launcher (or
``XPNET_DISTRIBUTED=1``): a plain ``python train.py`` gets :class:`SingleProcess`, whose
collectives return at once, and never imports mpi4py.

- :mod:`~xpnet.distributed.communicator`: ``Communicator``, ``SingleProcess``, ``world``,
  launcher detection, shards;
- :mod:`~xpnet.distributed.mpi`: ``MPICommunicator`` (mpi4py);
- :mod:`~xpnet.distributed.transports`: how each array library's arrays are summed (one table);
- :mod:`~xpnet.distributed.nccl`: NCCL through CuPy's binding;
- :mod:`~xpnet.distributed.averager`: ``GradientAverager``;
- :mod:`~xpnet.distributed.abort`: ending every rank on an error, shown once.
"""

from .abort import abort_on_error, report_and_abort
from .averager import GradientAverager
from .communicator import (
    CollectiveError,
    Communicator,
    RankRefused,
    ReplicaMismatch,
    SingleProcess,
    device_for_local_rank,
    launcher_world_size,
    reset,
    shard_bounds,
    world,
)
from .nccl import NcclUnavailableError

__all__ = ["CollectiveError", "Communicator", "GradientAverager", "NcclUnavailableError",
           "RankRefused", "ReplicaMismatch", "SingleProcess", "abort_on_error",
           "device_for_local_rank", "launcher_world_size", "report_and_abort", "reset",
           "shard_bounds", "world"]
