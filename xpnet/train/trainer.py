"""The Trainer: ``fit`` calls small parts at fixed points.

Per epoch: ``progress.start``; per batch: :func:`train_step`, the per-step schedule,
``totals.add``; per log interval: one host read of the running loss, ``guard.check``,
``progress.update``; at the end of the epoch: one host read of loss, metrics and per-step
losses, ``guard.check``, :func:`evaluate` on the test data, the per-epoch schedule, the history,
``progress.epoch_done`` and the checkpoint (``state.meta``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend, current
from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.loader import BatchLoader
from ..distributed import Communicator
from ..losses import SoftmaxCrossEntropy
from ..module import Module
from ..optim import Optimizer
from ..rng import Generator
from ..schedules import Schedule
from .evaluate import evaluate, predict
from .guard import DivergenceGuard, TrainingDiverged, check_data, check_trainer_args, diverged_path
from .metrics import Metric, Totals, default_metrics
from .parallel import DataParallel
from .progress import Progress
from .state import History, RunState, base_lr
from .step import train_step

__all__ = ["Trainer"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Trainer:
    """Train a model with an optimizer on (x, y) arrays (host NumPy or on the device).

    Parameters
    ----------
    model, optimizer : the model (its parameters already on the backend) and its optimizer.
    loss : defaults to :class:`SoftmaxCrossEntropy`.
    schedule : an LR schedule, stepped once per epoch (per optimizer step if its
        ``per_step`` is True).
    batch_size : examples per step; the last partial batch is kept.
    seed : seeds the batch order.
    metrics : counted besides the loss (default: accuracy for cross-entropy, none otherwise).
    progress : show a tqdm bar per epoch (default: only when stderr is a terminal).
    verbose : print one line per epoch to stderr.
    log_interval : steps between host reads of the running loss (progress bar, NaN guard).
    checkpoint : path written after every epoch (atomically), if given.
    divergence_factor : training stops (:class:`TrainingDiverged`) when a loss read is NaN,
        infinite or above this factor times the run's first loss read (None: only NaN/inf);
        the checkpoint keeps the last good epoch and the diverged state is saved beside it as
        ``<name>.diverged.npz``.
    comm : the ranks to train over (default :func:`xpnet.distributed.world`: all ranks of an
        MPI launch, else this process alone). With N ranks ``batch_size`` is the *global*
        batch: each rank trains on its share of every batch of one shared shuffle, gradients
        are averaged before each update, and only rank 0 prints and writes checkpoints (see
        :mod:`xpnet.train.parallel`).
    bucket_bytes : size of the gradient buckets reduced together (default: one per dtype).
    """

    def __init__(self, model: Module, optimizer: Optimizer, loss: Any = None, *,
                 schedule: Schedule | None = None, batch_size: int = 100, seed: int = 0,
                 metrics: list[Metric] | None = None, progress: bool | None = None,
                 verbose: bool = False, log_interval: int = 50,
                 checkpoint: str | Path | None = None, eval_batch_size: int = 1000,
                 backend: Backend | None = None, divergence_factor: float | None = 1e3,
                 comm: Communicator | None = None, bucket_bytes: int | None = None):
        check_trainer_args(model, optimizer, schedule, log_interval, checkpoint)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.eval_batch_size = _positive_int("eval_batch_size", eval_batch_size)
        self.model, self.optimizer = model, optimizer
        self.loss = loss if loss is not None else SoftmaxCrossEntropy(check_range=False)
        self.metrics = default_metrics(self.loss) if metrics is None else list(metrics)
        self.schedule = schedule
        self.log_interval = max(1, log_interval)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.backend = backend or current()
        self.state = RunState(seed)
        self.parallel = DataParallel(model, optimizer, comm, bucket_bytes=bucket_bytes)
        root = self.parallel.comm.is_root
        self.progress = Progress(progress if root else False, verbose and root)
        self._global_sizes: list[int] | None = None
        self.guard = DivergenceGuard(self.checkpoint, divergence_factor)

    # the run state's counters, as attributes of the trainer
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step_count(self) -> int:
        return self.state.step

    @property
    def history(self) -> History:
        return self.state.history

    @property
    def rng(self) -> Generator:
        return self.state.rng

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, loader: Iterable[tuple[Any, Any]], total: int | None = None
                    ) -> dict[str, float]:
        """One pass over ``loader``; returns ``{"loss": mean loss, <metric>: value, "lr": mean
        learning rate}`` and appends the per-step records to the history."""
        self.model.train()
        totals = Totals(self.metrics, keep_steps=True)
        epoch = self.state.epoch + 1
        lrs = []
        sizes = self._global_sizes if self.parallel.active else None
        local: list[int] = []
        for xb, yb in self.progress.start(loader, total, epoch):
            lrs.append(self.optimizer.lr)
            loss = self.loss
            if sizes is not None:  # this rank's share of global batch len(local)
                local.append(int(xb.shape[0]))
                loss = self.parallel.step_loss(loss, local[-1], sizes[len(local) - 1])
            out = train_step(self.model, loss, self.optimizer, xb, yb)
            if self.schedule is not None and self.schedule.per_step:
                self.schedule.step()
            totals.add(out.loss, out.output, yb)
            if self.guard.reference is None:  # one host read per run: the initial loss
                self.guard.set_reference(float(out.loss))
            self.state.step += 1
            if totals.steps % self.log_interval == 0:
                running = totals.mean_loss()  # the one host sync per interval
                self.guard.check(running, epoch, totals.steps)
                self.progress.update(running)
        self.progress.close()
        if totals.steps == 0:
            raise ValueError("the training loader yielded no batches")
        result, step_losses = totals.read()  # one host sync at the end of the epoch
        if sizes is not None:  # global loss and metrics: one Allreduce of host numbers
            result, step_losses = self.parallel.reduce_epoch(result, step_losses, local,
                                                             sizes[:len(local)])
        self.guard.check(result["loss"], epoch, totals.steps)
        first = self.state.step - totals.steps
        self.state.history.steps.extend(
            {"step": first + i + 1, "epoch": epoch, "loss": v, "lr": lr}
            for i, (v, lr) in enumerate(zip(step_losses, lrs)))
        result["lr"] = sum(lrs) / len(lrs)  # for the history: per-step schedules vary it
        return result

    # ------------------------------------------------------------------ fit / evaluate
    def fit(self, x_train: Any, y_train: Any, epochs: int, *, x_test: Any = None,
            y_test: Any = None) -> History:
        """Train until ``epochs`` epochs are done in total (a resumed trainer continues).

        Evaluates on (x_test, y_test) after each epoch when given; writes a checkpoint after
        each epoch when the trainer has a checkpoint path.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        check_data(self.model, self.loss, x_train, y_train, "training data",
                   names=("x_train", "y_train"))
        if x_test is not None:
            check_data(self.model, self.loss, x_test, y_test, "test data",
                       names=("x_test", "y_test"))
        self.parallel.start({"epoch": self.state.epoch, "step": self.state.step,
                             "batch order": self.rng.get_state(), "batch_size": self.batch_size})
        # N ranks: rank 0's model and optimizer everywhere, verified
        loader = BatchLoader(x_train, y_train, self.batch_size, shuffle=True, rng=self.rng,
                             backend=self.backend, shard=self.parallel.shard)
        self._global_sizes = self.parallel.global_sizes(len(loader.y), self.batch_size)
        while self.state.epoch < epochs:
            t0 = time.perf_counter()
            try:
                result = self.train_epoch(loader, total=len(loader))
            except TrainingDiverged as exc:
                raise self._save_diverged(exc) from None
            seconds = time.perf_counter() - t0
            record = {"epoch": self.state.epoch + 1, "loss": result.pop("loss")}
            record.update({f"train_{k}": v for k, v in result.items() if k != "lr"})
            record.update(lr=result["lr"], seconds=seconds)
            if x_test is not None:
                record.update({f"test_{k}": v for k, v in self.evaluate(x_test, y_test).items()})
            self.state.epoch += 1
            if self.schedule is not None and not self.schedule.per_step:
                self.schedule.step()
            self.state.history.records.append(record)
            self.progress.epoch_done(record)
            if self.checkpoint is not None:
                self.save(self.checkpoint)
        return self.history

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """``{"loss": ..., <metric>: ...}`` on (x, y), in evaluation mode (see
        :func:`xpnet.train.evaluate`)."""
        def run(xs: Any, ys: Any) -> dict[str, float]:
            return evaluate(self.model, self.loss, xs, ys, metrics=self.metrics,
                            batch_size=self.eval_batch_size, backend=self.backend)

        return self.parallel.evaluate(run, x, y)  # N ranks: each its share, then reduced

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class indices (classification) or outputs (other losses), as NumPy."""
        return predict(self.model, x, classes=isinstance(self.loss, SoftmaxCrossEntropy),
                       batch_size=self.eval_batch_size, backend=self.backend)

    def _save_diverged(self, exc: TrainingDiverged) -> TrainingDiverged:
        """Save the diverged state beside the checkpoint (never over it) for inspection;
        return the error to raise, naming that file."""
        if self.checkpoint is None:
            return exc
        path = diverged_path(self.checkpoint)
        try:
            self.save(path)
        except (OSError, ValueError) as save_exc:
            return TrainingDiverged(f"{exc}; saving the diverged state to {path} failed too "
                                    f"({save_exc})")
        return TrainingDiverged(f"{exc}; the diverged state was saved to {path} for "
                                "inspection")

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write model, optimizer, schedule, RNG states, counters and history atomically.

        With N ranks every rank calls this; they first verify that they hold the same model
        (ReplicaMismatch otherwise), then rank 0 alone writes.
        """
        self.parallel.check(f"before writing checkpoint {path}")
        if not self.parallel.comm.is_root:
            return Path(path)
        meta = self.state.meta(self.model, self.schedule, self.backend.name,
                               optimizer=self.optimizer, batch_size=self.batch_size)
        return save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), meta)

    def resume(self, path: str | Path, *, override: dict[str, Any] | None = None) -> None:
        """Restore everything :meth:`save` wrote; ``fit`` then continues where it stopped.

        The checkpoint is validated against this run first (:meth:`RunState.validate`): the
        model, the optimizer's class and settings, the schedule, the batch size and the
        learning rate must match the saved run, else
        :class:`~xpnet.checkpoint.ResumeMismatchError` names the differing setting and nothing
        is changed. ``override={"lr": x}`` is the one deliberate change allowed: the run goes
        on with base rate ``x`` (the schedule keeps its position and shape).
        """
        ck = load_checkpoint(path)
        parts = {"model": self.model, "optimizer": self.optimizer, "schedule": self.schedule}
        self.state.validate(ck, path, batch_size=self.batch_size, override=override, **parts)
        self.state.restore(ck, backend=self.backend, override=override, **parts)

    @property
    def lr(self) -> float:
        """The run's learning rate: the schedule's base rate, else the optimizer's rate."""
        return base_lr(self.optimizer, self.schedule)
