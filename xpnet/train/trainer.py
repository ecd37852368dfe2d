"""The Trainer: ``fit`` calls small parts at fixed points.

Before training: ``check_data`` and the other checks (nothing has changed yet). Per epoch:
``progress.start``; per batch: :func:`train_step` (with ``accumulate=K``, the optimizer steps
on every K-th micro-batch), the per-step schedule, ``totals.add``; per log interval: one host
read of the running loss, ``guard.check``, ``progress.update``; at the end of the epoch: one
host read of loss, metrics and per-step losses, ``guard.check``, :func:`evaluate` on the test
data, the per-epoch schedule, the history, ``progress.epoch_done``, the callbacks (early
stopping, keep-best) and the checkpoint (``state.meta``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..backend import Backend, as_host, current, to_device
from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.loader import BatchLoader
from ..distributed import Communicator
from ..layers import BatchNorm
from ..losses import SoftmaxCrossEntropy
from ..module import Module, Parameter
from ..optim import Optimizer
from ..rng import Generator
from ..schedules import Schedule
from ..threads import adapt_threads
from .callbacks import Callback, EarlyStopping, KeepBest
from .evaluate import evaluate, predict
from .guard import (
    DivergenceGuard,
    TrainingDiverged,
    check_data,
    check_trainer_args,
    diverged_path,
    num_examples,
)
from .metrics import Metric, Totals, default_metrics
from .parallel import DataParallel
from .progress import Progress
from .state import History, RunState, base_lr
from .step import train_step

__all__ = ["Trainer"]


def _with_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """``(item, is_last)`` pairs, looking one item ahead."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


class _TargetBatches:
    """Batches of ``x`` with real-valued (or one-hot) targets: the BatchLoader shuffles and
    batches ``x`` with example indices as labels, and the targets, moved to the device once,
    are gathered there by those indices. Same order, same ``drop_last`` as for labels."""

    def __init__(self, loader: BatchLoader, y: Any, backend: Backend):
        self.loader, self.backend = loader, backend
        self.y = to_device(y, backend=backend)  # host NumPy already (as_host)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        xp = self.backend.xp
        for xb, idx in self.loader:
            yield xb, xp.take(self.y, idx, axis=0)


class Trainer:
    """Train a model with an optimizer on (x, y) arrays (host NumPy or on the device).

    Parameters
    ----------
    model, optimizer : the model (its parameters already on the backend) and its optimizer.
    loss : defaults to :class:`SoftmaxCrossEntropy`.
    schedule : an LR schedule, stepped once per epoch (per optimizer step if its
        ``per_step`` is True).
    batch_size : examples per forward/backward pass.
    drop_last : skip the last batch of an epoch when it is smaller than ``batch_size``
        (default False: kept). A model with BatchNorm whose last batch would hold one
        example is refused before training unless ``drop_last`` is set.
    accumulate : optimizer steps every ``accumulate`` batches, on the mean of their gradients
        (gradient accumulation; see :meth:`train_epoch`). Default 1.
    seed : seeds the batch order.
    metrics : counted besides the loss (default: accuracy for cross-entropy, none otherwise).
        Targets may be integer labels or, for other losses, real arrays (N, ...).
    early_stopping : an :class:`EarlyStopping` that ends ``fit`` when its monitored value
        stops improving.
    keep_best : path of a checkpoint rewritten whenever ``test_loss`` improves (a
        :class:`KeepBest`: pass one for another monitor).
    callbacks : further :class:`Callback` objects run at the end of every epoch.
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
                 drop_last: bool = False, accumulate: int = 1,
                 metrics: list[Metric] | None = None, progress: bool | None = None,
                 verbose: bool = False, log_interval: int = 50,
                 checkpoint: str | Path | None = None, eval_batch_size: int = 1000,
                 early_stopping: EarlyStopping | None = None,
                 keep_best: str | Path | KeepBest | None = None,
                 callbacks: Iterable[Callback] = (), backend: Backend | None = None,
                 divergence_factor: float | None = 1e3, comm: Communicator | None = None,
                 bucket_bytes: int | None = None):
        check_trainer_args(model, optimizer, schedule, log_interval, checkpoint)
        self.batch_size = validate.positive_int("Trainer", "batch_size", batch_size)
        self.eval_batch_size = validate.positive_int("Trainer", "eval_batch_size",
                                                     eval_batch_size)
        self.accumulate = validate.positive_int("Trainer", "accumulate", accumulate)
        self.drop_last = bool(drop_last)
        if keep_best is not None and not isinstance(keep_best, KeepBest):
            keep_best = KeepBest(keep_best)
        # early stopping first, keep-best last: a best checkpoint holds the others' new state
        self.callbacks = [c for c in (early_stopping, *callbacks, keep_best) if c is not None]
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise TypeError(f"Trainer: callbacks must be xpnet.train.Callback objects, got "
                                f"{type(c).__name__}")
        self.stopped_early = False
        self.model, self.optimizer = model, optimizer
        self.loss = loss if loss is not None else SoftmaxCrossEntropy(check_range=False)
        self.metrics = default_metrics(self.loss) if metrics is None else list(metrics)
        self.schedule = schedule
        self.log_interval = int(log_interval)  # check_trainer_args refused values below 1
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.backend = backend or current()
        self.state = RunState(seed)
        self.parallel = DataParallel(model, optimizer, comm, bucket_bytes=bucket_bytes)
        root = self.parallel.comm.is_root
        self.progress = Progress(progress if root else False, verbose and root)
        self._global_sizes: list[int] | None = None
        self.guard = DivergenceGuard(self.checkpoint, divergence_factor)
        self._pending = 1

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
        learning rate}`` and appends the per-step records to the history.

        With ``accumulate=K`` the optimizer steps after every K-th batch (and after the last
        batch of the epoch) on the mean of the gradients of the batches since its last step:
        K batches of B examples give the update of one batch of K*B (exactly, up to rounding,
        for a model without BatchNorm, whose statistics stay per batch). The last group of an
        epoch may hold fewer batches, and the last batch fewer examples; the step then takes
        the mean of its batches' mean gradients. A "step" in the history and in per-step
        schedules is an optimizer step; its loss is the mean of its batches' losses.

        With N ranks each batch is this rank's share of a global batch: its loss gradient is
        weighted by that share, gradients are averaged over the ranks in the optimizer step,
        and the epoch's loss, metrics and per-step losses are reduced to global values.
        """
        self.model.train()
        if self.accumulate > 1:
            self.model.zero_grad()  # nothing from before this epoch may be added in
        totals = Totals(self.metrics, keep_steps=True)
        epoch = self.state.epoch + 1
        k, groups, lrs = self.accumulate, [], []
        pending = 0  # batches whose gradients wait for the next optimizer step
        sizes = self._global_sizes if self.parallel.active else None
        local: list[int] = []
        for (xb, yb), last in _with_last(self.progress.start(loader, total, epoch)):
            pending += 1
            stepping = pending == k or last
            self._pending = pending  # read by the averaging hook during the step
            loss_fn = self.loss
            if sizes is not None:  # this rank's share of global batch len(local)
                local.append(int(xb.shape[0]))
                loss_fn = self.parallel.step_loss(loss_fn, local[-1], sizes[len(local) - 1])
            out = train_step(self.model, loss_fn, self.optimizer, xb, yb, step=stepping)
            if self.guard.reference is None:  # one host read per run: the initial loss
                self.guard.set_reference(float(out.loss))
            if stepping:
                if k > 1:
                    self.model.zero_grad()
                lrs.append(self.optimizer.lr)  # the rate this step used
                groups.append(pending)
                pending = 0
                if self.schedule is not None and self.schedule.per_step:
                    self.schedule.step()
                self.state.step += 1
            totals.add(out.loss, out.output, yb)
            if totals.steps % self.log_interval == 0:
                running = totals.mean_loss()  # the one host sync per interval
                self.guard.check(running, epoch, totals.steps)
                self.progress.update(running)
        self.progress.close()
        if totals.steps == 0:
            raise ValueError("the training loader yielded no batches")
        result, batch_losses = totals.read()  # one host sync at the end of the epoch
        if sizes is not None:  # global loss and metrics: one Allreduce of host numbers
            result, batch_losses = self.parallel.reduce_epoch(result, batch_losses, local,
                                                              sizes[:len(local)])
        self.guard.check(result["loss"], epoch, totals.steps)
        first, at = self.state.step - len(groups), 0
        for i, (n, lr) in enumerate(zip(groups, lrs)):
            loss = sum(batch_losses[at:at + n]) / n
            at += n
            self.state.history.steps.append(
                {"step": first + i + 1, "epoch": epoch, "loss": loss, "lr": lr})
        result["lr"] = sum(lrs) / len(lrs)  # for the history: per-step schedules vary it
        return result

    def _average_accumulated(self, params: dict[str, Parameter]) -> None:
        """Optimizer grad hook: the summed gradients of the pending batches -> their mean."""
        if self._pending > 1:
            scale = 1.0 / self._pending
            for p in params.values():
                p.replace_grad(p.grad * scale)

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
        n = num_examples(x_train)
        self._check_plan(n, x_test is not None)
        # N ranks: rank 0's model and optimizer everywhere, verified
        self.parallel.start({"epoch": self.state.epoch, "step": self.state.step,
                             "batch order": self.rng.get_state(), "batch_size": self.batch_size})
        adapt_threads()  # BLAS threads for the cores free now (xpnet.threads: the policy)
        loader = self._loader(x_train, y_train)
        self._global_sizes = (self.parallel.global_sizes(n, self.batch_size)
                              if self.parallel.active else None)
        accumulating = self.accumulate > 1
        if accumulating:
            was = {n: p.accumulate for n, p in self.model.parameters().items()}
            self.model.accumulate_grads(True)
            remove_hook = self.optimizer.register_grad_hook(self._average_accumulated)
        self.stopped_early = False
        self._test_checked = False
        try:
            while self.state.epoch < epochs and not self.stopped_early:
                self._run_epoch(loader, x_test, y_test)
        finally:
            if accumulating:
                remove_hook()
                for n, p in self.model.parameters().items():
                    p.accumulate = was[n]
        return self.history

    def _check_plan(self, n: int, has_test: bool) -> None:
        """Refuse, before anything changes, a run that would fail part-way."""
        if n == 0:
            raise ValueError("training data: no examples; expected at least one")
        last = n % self.batch_size
        if last == 1 and not self.drop_last and any(
                isinstance(m, BatchNorm) for m in self.model.modules().values()):
            raise ValueError(f"training data: {n} examples in batches of {self.batch_size} "
                             "leave a last batch of one example, on which BatchNorm has no "
                             "batch statistics; pass drop_last=True or another batch_size")
        if self.drop_last and n < self.batch_size:
            raise ValueError(f"training data: {n} examples with drop_last=True and batch_size "
                             f"{self.batch_size} leave no batch; expected at least "
                             f"{self.batch_size} examples")
        for c in self.callbacks:
            if not has_test and (c.monitor or "").startswith("test_"):
                raise ValueError(f"{c!r} monitors {c.monitor!r}, but fit was given no "
                                 "x_test/y_test; pass test data or monitor a training value "
                                 "such as 'loss'")

    def _loader(self, x: Any, y: Any) -> Iterable[tuple[Any, Any]]:
        y = as_host(y, "y_train")
        if y.dtype.kind in "iu":
            return BatchLoader(x, y, self.batch_size, shuffle=True, rng=self.rng,
                               drop_last=self.drop_last, backend=self.backend,
                               shard=self.parallel.shard)
        index = np.arange(num_examples(x))
        loader = BatchLoader(x, index, self.batch_size, shuffle=True, rng=self.rng,
                             drop_last=self.drop_last, backend=self.backend,
                             shard=self.parallel.shard)
        return _TargetBatches(loader, y, self.backend)

    def _run_epoch(self, loader: Any, x_test: Any, y_test: Any) -> None:
        t0 = time.perf_counter()
        try:
            result = self.train_epoch(loader, total=len(loader))
        except TrainingDiverged as exc:
            raise self._save_diverged(exc) from None
        seconds = time.perf_counter() - t0
        record = {"epoch": self.state.epoch + 1, "loss": result.pop("loss")}
        record.update({f"train_{k}": v for k, v in result.items() if k != "lr"})
        record.update(lr=result["lr"], seconds=seconds)
        if x_test is not None:  # the test data's checks run at the first evaluation of a fit
            scores = self._evaluate(x_test, y_test, check=not self._test_checked)
            self._test_checked = True
            record.update({f"test_{k}": v for k, v in scores.items()})
        self.state.epoch += 1
        if self.schedule is not None and not self.schedule.per_step:
            self.schedule.step()
        self.state.history.records.append(record)
        self.progress.epoch_done(record)
        stop = [c.on_epoch_end(self, record) for c in self.callbacks]
        self.stopped_early = any(stop)
        if self.checkpoint is not None:
            self.save(self.checkpoint)

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """``{"loss": ..., <metric>: ...}`` on (x, y), in evaluation mode (see
        :func:`xpnet.train.evaluate`)."""
        return self._evaluate(x, y, check=True)

    def _evaluate(self, x: Any, y: Any, check: bool) -> dict[str, float]:
        def run(xs: Any, ys: Any) -> dict[str, float]:
            return evaluate(self.model, self.loss, xs, ys, metrics=self.metrics,
                            batch_size=self.eval_batch_size, backend=self.backend, check=check)

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
        """Write model, optimizer, schedule, RNG states, counters, callbacks and history
        atomically.

        With N ranks every rank calls this; they first verify that they hold the same model
        (ReplicaMismatch otherwise), then rank 0 alone writes.
        """
        self.parallel.check(f"before writing checkpoint {path}")
        if not self.parallel.comm.is_root:
            return Path(path)
        meta = self.state.meta(self.model, self.schedule, self.backend.name, self.callbacks,
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
        self.state.restore(ck, backend=self.backend, callbacks=self.callbacks,
                           override=override, **parts)

    @property
    def lr(self) -> float:
        """The run's learning rate: the schedule's base rate, else the optimizer's rate."""
        return base_lr(self.optimizer, self.schedule)
