"""Data parallelism for the Trainer: what changes when ``fit`` runs on N ranks.

:class:`DataParallel` is called by the Trainer at fixed points; with one process
(:class:`~xpnet.distributed.SingleProcess`) every call returns at once and nothing is added to
the training step. With N ranks:

- ``start``: rank 0's parameters, buffers and optimizer state are broadcast, then every rank's
  checksum is compared (also at every checkpoint: ``check``).
- ``shard``: the loader's ``(rank, size)``: the same shuffle everywhere, each rank its
  contiguous share of every global batch.
- ``grad_weight``: the factor on this rank's loss gradient (``train_step``'s ``grad_scale``).
  When a global batch does not split evenly, it is ``n_rank * N / n_global``, so the averaged
  gradient (and a synchronised BatchNorm's statistics) is exactly that of the whole batch.
- gradients are averaged by a :class:`~xpnet.distributed.GradientAverager` registered on the
  optimizer (one Allreduce per dtype or bucket per step).
- ``reduce_epoch`` / ``evaluate``: losses and metrics over all ranks, exactly as one process
  over the global batches would report them.
- dropout: each rank's layer Generators get ``stream = rank``, so ranks draw different masks
  for their different examples while the saved RNG state stays the same on every rank.
"""

from __future__ import annotations

from typing import Any

from ..distributed import (
    Communicator,
    GradientAverager,
    RankRefused,
    ReplicaMismatch,
    shard_bounds,
    world,
)
from ..layers import BatchNorm
from ..module import Module
from ..optim import Optimizer
from .checks import num_examples
from .state import layer_generators

__all__ = ["DataParallel"]


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (a model structure can be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

class DataParallel:
    """The Trainer's hooks for ``comm`` (default :func:`xpnet.distributed.world`)."""

    def __init__(self, model: Module, optimizer: Optimizer, comm: Communicator | None = None,
                 *, bucket_bytes: int | None = None):
        self.comm = comm or world()
        self.model, self.optimizer = model, optimizer
        self.active = self.comm.size > 1
        self.averager = GradientAverager.attach(optimizer, self.comm,
                                                bucket_bytes=bucket_bytes) \
            if self.active else None
        for m in model.modules().values():  # synchronised BatchNorm: over these ranks
            if isinstance(m, BatchNorm) and m.sync:
                m.comm = self.comm
        if self.active:  # each rank its own dropout masks (the host RNG state stays shared)
            for g in layer_generators(model).values():
                g.stream = self.comm.rank

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.comm.rank, self.comm.size) if self.active else None

    def start(self, run: dict[str, Any] | None = None,
              refused: Exception | None = None) -> None:
        """Make every rank hold rank 0's model and optimizer, then verify it.

        First (one allgather of a small dict) the ranks exchange the outcome of their own
        checks (``refused``: this rank's error, or None) and, like torchrun's fail-fast
        rendezvous, stop together: a rank that refused raises its own error, every other rank
        a :class:`~xpnet.distributed.RankRefused` naming the first rank that refused and its
        error, so that none waits for it. Then every rank must agree on ``run`` (epoch, step,
        batch-order RNG state, batch size, dataset size, batches per epoch...), the model's
        structure (parameter and buffer names and shapes) and the optimizer's class and
        settings; otherwise every rank raises the same ReplicaMismatch naming the first rank
        and field that differ from rank 0 (a per-rank seed, a training set one example short),
        before any collective whose sizes could disagree. With one process, ``refused`` is
        raised at once."""
        if not self.active:
            if refused is not None:
                raise refused
            return
        outcome = None if refused is None else f"{type(refused).__name__}: {refused}"
        mine = {"refused": outcome, **(run or {}), **self.plan()}
        ranks = self.comm.allgather_object(mine)
        if refused is not None:
            raise refused
        for r, other in enumerate(ranks):
            if other.get("refused") is not None:
                raise RankRefused(f"rank {r} refused: {other['refused']}; this rank "
                                  f"({self.comm.rank}) stops with it rather than wait")
        for r, other in enumerate(ranks):
            keys = sorted((set(other) | set(ranks[0])), key=str)
            differ = [f"{k} ({_short(other.get(k))} vs {_short(ranks[0].get(k))})"
                      for k in keys if other.get(k) != ranks[0].get(k)]
            if differ:
                raise ReplicaMismatch(
                    f"rank {r} starts training with another {', '.join(differ)} than rank 0; "
                    "every rank must use the same data, model, optimizer, seed, batch size "
                    "and checkpoint (the batch order is shared)")
        self.comm.broadcast_module(self.model)
        self.comm.broadcast_optimizer(self.optimizer)
        self.check("at the start of training")

    def plan(self) -> dict[str, Any]:
        """What ranks must share besides the run's counters: the model's structure and the
        optimizer's settings (JSON-like values)."""
        structure = {k: list(p.shape) for k, p in self.model.parameters().items()}
        structure.update({k: list(v.shape) for k, v in self.model.buffers().items()})
        opt = self.optimizer
        return {"model structure": structure, "optimizer": type(opt).__name__,
                "optimizer settings": opt.settings(), "optimizer lr": float(opt.lr)}

    def check(self, where: str) -> None:
        """Raise ReplicaMismatch (on every rank) unless all ranks hold the same model."""
        if self.active:
            self.comm.check_identical(self.model, where)

    def global_sizes(self, n: int, batch_size: int) -> list[int]:
        """Examples in each global batch of an epoch over ``n`` examples."""
        return [min(batch_size, n - s) for s in range(0, n, batch_size)]

    def grad_weight(self, local: int, global_n: int) -> float:
        """The weight of this rank's loss gradient for its ``local`` examples of a global
        batch of ``global_n``: 1 when the batch splits evenly."""
        if not self.active or local * self.comm.size == global_n:
            return 1.0
        return local * self.comm.size / global_n

    def reduce_epoch(self, result: dict[str, float], step_losses: list[float],
                     local: list[int], global_n: list[int]) -> tuple[dict[str, float],
                                                                      list[float]]:
        """Global training loss (mean over steps of each global batch's mean loss), metrics
        (over all examples) and per-step losses: one Allreduce of a few host numbers."""
        if not self.active:
            return result, step_losses
        seen = sum(local)
        names = [k for k in result if k != "loss"]
        terms = [v * n / g for v, n, g in zip(step_losses, local, global_n)]
        sums = self.comm.allreduce_host([*terms, *(result[k] * seen for k in names), seen])
        steps = sums[:len(terms)]
        total_seen = sums[-1]
        out = {"loss": sum(steps) / len(steps)}
        out.update({k: sums[len(terms) + i] / total_seen for i, k in enumerate(names)})
        return out, steps

    def evaluate(self, run: Any, x: Any, y: Any) -> dict[str, float]:
        """``run(x, y)`` (an evaluate returning means) on this rank's share of ``(x, y)``,
        combined over ranks into the means over all of it."""
        if not self.active:
            means: dict[str, float] = run(x, y)
            return means
        n = num_examples(x)
        a, b = shard_bounds(n, self.comm.rank, self.comm.size)
        part = run(x[a:b], y[a:b]) if b > a else None
        keys = self.comm.broadcast_object(sorted(part) if part is not None else None)
        if keys is None:  # rank 0 had no examples: n < size
            raise ValueError(f"evaluate: {n} examples cannot be split over {self.comm.size} "
                             "ranks")
        sums = self.comm.allreduce_host([(part[k] * (b - a) if part else 0.0) for k in keys])
        return {k: s / n for k, s in zip(keys, sums)}
