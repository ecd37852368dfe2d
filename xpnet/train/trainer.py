"""The Trainer: a short loop that trains and fires callback events.

Everything besides the steps themselves (progress output, the divergence guard, the
learning-rate schedule, checkpoints, early stopping, keep-best) is a
:class:`~xpnet.train.Callback`; the events and their order are described in
:mod:`xpnet.train.callbacks`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import precision as mp
from .. import validate
from ..backend import Backend, as_host, current, to_device
from ..data.loader import BatchLoader
from ..distributed import Communicator
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..layers import BatchNorm
from ..losses import SoftmaxCrossEntropy
from ..module import Module
from ..optim import Optimizer
from ..rng import Generator
from ..schedules import Schedule
from ..threads import adapt_threads, pinned_threads
from .callbacks import Callback, KeepBest, LossScaling, LRSchedule, SaveCheckpoint
from .checks import check_arrays, check_data, input_dtype, label_dtype, num_examples
from .evaluate import evaluate, predict
from .guard import DivergenceGuard
from .interrupt import EpochSnapshot
from .metrics import Metric, Totals, default_metrics
from .parallel import DataParallel
from .progress import Progress
from .state import History, RunState, apply_resume, check_override, check_resume
from .step import train_step

__all__ = ["Trainer"]


class _TargetBatches:
    """Batches of ``x`` with real-valued (or one-hot) targets: the BatchLoader shuffles and
    batches ``x`` with example indices as labels, and the targets, moved to the device once,
    are gathered there by those indices. Same order, same ``drop_last`` as for labels."""

    def __init__(self, loader: BatchLoader, y: Any, backend: Backend, dtype: str | None):
        self.loader, self.backend = loader, backend
        self.y = to_device(y, dtype=dtype, backend=backend)  # host NumPy already (as_host)

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
    batch_size : examples per forward/backward pass.
    seed : seeds the batch order.
    drop_last : skip the last batch of an epoch when it is smaller than ``batch_size``
        (default False: kept). A model with BatchNorm whose last batch would hold one
        example is refused before training unless ``drop_last`` is set.
    accumulate : optimizer steps every ``accumulate`` batches, on the mean of their gradients
        (gradient accumulation; see :meth:`train_epoch`). Default 1.
    metrics : counted besides the loss (default: accuracy for cross-entropy, none otherwise).
        Targets may be integer labels or, for other losses, real arrays (N, ...).
    callbacks : :class:`~xpnet.train.Callback` objects: :class:`LRSchedule`,
        :class:`SaveCheckpoint`, :class:`EarlyStopping`, :class:`KeepBest`, your own. A
        :class:`Progress` (a bar when stderr is a terminal, else a line every 30 s) and a
        :class:`DivergenceGuard`
        (factor 1e3) are added unless the list holds one of that kind.
    log_interval : batches between host reads of the running loss (for the progress bar and
        the divergence guard).
    eval_batch_size : examples per batch in :meth:`evaluate` and :meth:`predict`.
    backend : where training runs (default: the current backend).
    comm : the ranks to train over (default :func:`xpnet.distributed.world`: all ranks of an
        MPI launch, else this process alone). With N ranks ``batch_size`` is the *global*
        batch: each rank trains on its share of every batch of one shared shuffle, gradients
        are averaged before each update, and only rank 0 prints and writes checkpoints (see
        :mod:`xpnet.train.parallel`).
    bucket_bytes : size of the gradient buckets reduced together (default: one per dtype).
    precision : "float32" (default), "mixed16" or "bf16": the forward and backward of Linear
        and Conv2d run in float16 / bfloat16 while parameters, optimizer state, the loss and
        normalisation statistics stay float32 (see :mod:`xpnet.precision`). "mixed16" adds a
        :class:`LossScaling` callback unless one is given; "bf16" needs none. Evaluation and
        prediction use the float32 weights.

    Examples
    --------
    >>> opt = xpnet.Adam(model)
    >>> trainer = Trainer(model, opt, batch_size=64,
    ...                   callbacks=[LRSchedule(xpnet.StepLR(opt, 5)), SaveCheckpoint("run.npz")])
    >>> history = trainer.fit(x_train, y_train, 10, x_test=x_test, y_test=y_test)
    """

    def __init__(self, model: Module, optimizer: Optimizer, loss: Any = None, *,
                 batch_size: int = 100, seed: int = 0, drop_last: bool = False,
                 accumulate: int = 1, metrics: list[Metric] | None = None,
                 callbacks: Iterable[Callback] = (), log_interval: int = 50,
                 eval_batch_size: int = 1000, backend: Backend | None = None,
                 comm: Communicator | None = None, bucket_bytes: int | None = None,
                 precision: str = "float32"):
        self.model = validate.instance("Trainer", "model", model, Module, "an xpnet Module")
        self.optimizer = validate.instance("Trainer", "optimizer", optimizer, Optimizer,
                                           "an xpnet Optimizer (e.g. xpnet.Adam(model))")
        self.batch_size = validate.positive_int("Trainer", "batch_size", batch_size)
        self.eval_batch_size = validate.positive_int("Trainer", "eval_batch_size",
                                                     eval_batch_size)
        self.accumulate = validate.positive_int("Trainer", "accumulate", accumulate)
        self.log_interval = validate.positive_int("Trainer", "log_interval", log_interval)
        self.drop_last = bool(drop_last)
        self.precision = mp.check("Trainer", precision)
        self.backend = backend or current()
        mp.low_dtype(self.backend.xp, self.precision)  # refused here if the library lacks it
        self.callbacks = self._with_defaults(callbacks)
        self.loss = loss if loss is not None else SoftmaxCrossEntropy(check_range=False)
        self.metrics = default_metrics(self.loss) if metrics is None else list(metrics)
        self.state = RunState(seed)
        self.parallel = DataParallel(model, optimizer, comm, bucket_bytes=bucket_bytes)
        found = [c.scaler for c in self.callbacks if isinstance(c, LossScaling)]
        self.scaler = found[0] if found else None
        if self.scaler is not None and self.parallel.active:
            raise ValueError("Trainer: loss scaling over N ranks is not supported (each rank "
                             "would decide alone to skip a step); expected one process, or "
                             "precision='bf16', which needs no scaling")
        self.stopped_early = False
        self.batches_per_epoch = 0
        self.train_size: int | None = None  # examples in the last fit's training set
        self.resumed_from: Path | None = None  # the checkpoint this run was resumed from
        self.resumed_epoch = -1  # the epoch count the resume restored
        self._resumed_size: int | None = None  # what the next fit must be given, on resume
        self._global_sizes: list[int] | None = None
        self.threads: int | None = None  # the thread count fit trains with (saved)
        self._resumed_threads: int | None = None  # the count the resumed run trained with

    def _with_defaults(self, callbacks: Iterable[Callback]) -> list[Callback]:
        """The callbacks checked, the default Progress and DivergenceGuard added, in firing
        order (descending priority; ties keep the given order)."""
        callbacks = list(callbacks)
        for c in callbacks:
            validate.instance("Trainer", "callbacks", c, Callback,
                              "a list of xpnet.train.Callback objects")
            if isinstance(c, LRSchedule) and c.schedule.optimizer is not self.optimizer:
                raise ValueError("Trainer: the schedule drives another optimizer than the "
                                 "trainer's; expected a schedule built on this optimizer")
        kinds: list[type[Callback]] = [Progress, DivergenceGuard]
        if self.precision == "mixed16":
            kinds.append(LossScaling)
        for kind in kinds:
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(kind())
        files = [(type(c).__name__, c.path.resolve()) for c in callbacks
                 if isinstance(c, (SaveCheckpoint, KeepBest))]
        for i, (a, path) in enumerate(files):
            for b, other in files[i + 1:]:
                if path == other:
                    raise ValueError(f"Trainer: {a} and {b} both write {path}; expected "
                                     "different files (the best epoch would be overwritten "
                                     "by the latest)")
        keys = [c.key for c in callbacks if c.key is not None]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"Trainer: two callbacks save their state as {twice}; expected "
                             "one callback per key (one schedule, one monitor per value)")
        return sorted(callbacks, key=lambda c: -c.priority)

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

    @property
    def schedule(self) -> Schedule | None:
        """The schedule of the :class:`LRSchedule` callback, if there is one."""
        found = [c.schedule for c in self.callbacks if isinstance(c, LRSchedule)]
        return found[0] if found else None

    @property
    def lr(self) -> float:
        """The run's learning rate: the schedule's base rate, else the optimizer's rate."""
        schedule = self.schedule
        return float(schedule.base_lr if schedule is not None else self.optimizer.lr)

    def _fire(self, event: str, *args: Any) -> None:
        for c in self.callbacks:
            getattr(c, event)(self, *args)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, loader: Any) -> dict[str, float]:
        """One pass over ``loader``; returns ``{"loss": mean loss, <metric>: value, "lr": mean
        learning rate}`` and appends the per-step records to the history.

        With ``accumulate=K`` the optimizer steps after every K-th batch (and after the last
        batch of the epoch) on the mean of the gradients of the batches since its last step
        (each batch's loss gradient is scaled by 1/(batches in its group)): K batches of B
        examples give the update of one batch of K*B (exactly, up to rounding, for a model
        without BatchNorm, whose statistics stay per batch). The last group of an epoch may hold
        fewer batches, and the last batch fewer examples; the step then takes the mean of its
        batches' mean gradients. A "step" in the history and in per-step schedules is an
        optimizer step; its loss is the mean of its batches' losses.

        With N ranks each batch is this rank's share of a global batch: its loss gradient is
        weighted by that share, gradients are averaged over the ranks in the optimizer step,
        and the epoch's loss, metrics and per-step losses are reduced to global values.
        """
        self.model.train()
        k, total = self.accumulate, len(loader)
        if k > 1:
            self.model.zero_grad()  # nothing from before this epoch may be added in
        totals = Totals(self.metrics, keep_steps=True)
        sizes = self._global_sizes
        local: list[int] = []
        groups, lrs = [], []
        for i, (xb, yb) in enumerate(loader):
            group = min(k, total - i // k * k)  # batches in this optimizer step
            stepping = (i + 1) % k == 0 or i + 1 == total
            scale = 1.0 / group
            if sizes is not None:  # this rank's share of global batch i
                local.append(int(xb.shape[0]))
                scale *= self.parallel.grad_weight(local[-1], sizes[i])
            with mp.autocast(self.precision):
                out = train_step(self.model, self.loss, self.optimizer, xb, yb,
                                 step=stepping, grad_scale=scale, scaler=self.scaler)
            if stepping:
                if k > 1:
                    self.model.zero_grad()
                lrs.append(self.optimizer.lr)  # the rate this step used
                groups.append(group)
                self.state.step += 1
            totals.add(out.loss, out.output, yb)
            # the one host sync per interval
            running = totals.mean_loss() if totals.steps % self.log_interval == 0 else None
            self._fire("on_batch_end", totals.steps, out, running)
            if stepping:
                self._fire("on_step_end", self.state.step)
        if totals.steps == 0:
            raise ValueError("the training loader yielded no batches")
        result, batch_losses = totals.read()  # one host sync at the end of the epoch
        if sizes is not None:  # global loss and metrics: one Allreduce of host numbers
            result, batch_losses = self.parallel.reduce_epoch(result, batch_losses, local,
                                                              sizes[:len(local)])
        first, at = self.state.step - len(groups), 0
        epoch = self.state.epoch + 1
        for j, (n, lr) in enumerate(zip(groups, lrs)):
            self.state.history.steps.append({"step": first + j + 1, "epoch": epoch,
                                             "loss": sum(batch_losses[at:at + n]) / n, "lr": lr})
            at += n
        # for the history (per-step schedules vary it); fsum: the mean of equal rates is that
        # rate, not 0.0010000000000000007
        result["lr"] = math.fsum(lrs) / len(lrs)
        return result

    # ------------------------------------------------------------------ fit / evaluate
    def fit(self, x_train: Any, y_train: Any, epochs: int, *, x_test: Any = None,
            y_test: Any = None) -> History:
        """Train until ``epochs`` epochs are done in total (a resumed trainer continues),
        evaluating on (x_test, y_test) after each epoch when given. Every check runs before
        anything changes; the callbacks then see the events described in
        :mod:`xpnet.train.callbacks`. With N ranks the checks' outcomes are exchanged first:
        a rank that refuses its input raises its error, every other rank a
        :class:`~xpnet.distributed.RankRefused` naming it (none is left waiting).
        """
        # this rank's own checks; with N ranks their outcome goes through the agreement
        # below, so that a rank refusing its input stops every rank instead of leaving
        # them waiting in the first collective
        refused: Exception | None = None
        run: dict[str, Any] = {}
        n = 0
        try:
            n = self._check_fit(x_train, y_train, epochs, x_test, y_test)
            batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            run = {"epoch": self.state.epoch, "step": self.state.step,
                   "batch order": self.rng.get_state(), "batch_size": self.batch_size,
                   "accumulate": self.accumulate, "drop_last": self.drop_last,
                   "dataset size": n, "batches per epoch": batches}
        except Exception as exc:
            if not self.parallel.active:
                raise
            refused = exc
        # N ranks: every rank's checks passed, and the same data, batches, model, optimizer
        # and seeds everywhere (checked before anything whose sizes could differ), then rank
        # 0's model and optimizer everywhere, verified
        self.parallel.start(run, refused)
        # BLAS threads for the cores free now (xpnet.threads: the policy), or, resumed, the
        # count the run trained with (it changes the rounding); a count the user set wins
        self.threads = adapt_threads(self._resumed_threads) or pinned_threads()
        loader = self._loader(x_train, y_train)  # draws nothing until iterated
        self.train_size, self._resumed_size = n, None
        self.batches_per_epoch = len(loader)
        self._global_sizes = (self.parallel.global_sizes(n, self.batch_size)
                              if self.parallel.active else None)
        was = {name: p.accumulate for name, p in self.model.parameters().items()}
        if self.accumulate > 1:
            self.model.accumulate_grads(True)
        self.stopped_early = False
        test_checked = False  # the test data's checks run at the first evaluation of a fit
        try:
            self._fire("on_fit_start")
            while self.state.epoch < epochs and not self.stopped_early:
                snapshot = EpochSnapshot(self)  # an interrupted epoch is rolled back
                try:
                    self._fire("on_epoch_start", self.state.epoch + 1)
                    t0 = time.perf_counter()
                    result = self.train_epoch(loader)
                    record = {"epoch": self.state.epoch + 1, "loss": result.pop("loss")}
                    record.update({f"train_{k}": v for k, v in result.items() if k != "lr"})
                    record.update(lr=result["lr"], seconds=time.perf_counter() - t0)
                    if x_test is not None:
                        self._fire("on_evaluate_start", num_examples(x_test))
                        scores = self._evaluate(x_test, y_test, check=not test_checked)
                        test_checked = True
                        record.update({f"test_{k}": v for k, v in scores.items()})
                    self.state.epoch += 1
                    self.state.history.records.append(record)
                    self._fire("on_epoch_end", record)
                except KeyboardInterrupt:
                    snapshot.restore(self)
                    raise
        finally:
            for name, p in self.model.parameters().items():
                p.accumulate = was[name]
            self._fire("on_fit_end")
        return self.history

    def _check_fit(self, x_train: Any, y_train: Any, epochs: int, x_test: Any, y_test: Any
                   ) -> int:
        """Every check of :meth:`fit`'s arguments against the model, loss and callbacks, run
        before anything changes; returns the number of training examples."""
        validate.non_negative_int("fit", "epochs", epochs)
        check_arrays("fit", x_train=x_train, y_train=y_train)
        if (x_test is None) != (y_test is None):
            given, missing = ("x_test", "y_test") if y_test is None else ("y_test", "x_test")
            raise ValueError(f"fit: {given} was given without {missing}; expected both (test "
                             "data to evaluate on after each epoch) or neither")
        if x_test is not None:
            check_arrays("fit", x_test=x_test, y_test=y_test)
        check_data(self.model, self.loss, x_train, y_train, "training data",
                   names=("x_train", "y_train"))
        if x_test is not None:
            check_data(self.model, self.loss, x_test, y_test, "test data",
                       names=("x_test", "y_test"))
        n = num_examples(x_train)
        self._check_plan(n, x_test is not None)
        # one example of each set through the model and loss in evaluation mode (no state
        # changes): a shape the model or loss refuses is named now, not after an epoch
        self._probe(x_train, y_train, "x_train/y_train")
        if x_test is not None:
            self._probe(x_test, y_test, "x_test/y_test")
        return n

    def _check_plan(self, n: int, has_test: bool) -> None:
        """Refuse, before anything changes, a run that would fail part-way."""
        if n == 0:
            raise ValueError("training data: no examples; expected at least one")
        if self._resumed_size is not None and n != self._resumed_size:
            raise ValueError(f"training data: {n} examples, but the run resumed from "
                             f"{self.resumed_from} was trained on {self._resumed_size}; resume "
                             "with the same training set (for the examples: the same "
                             "--train-limit)")
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

    def _probe(self, x: Any, y: Any, names: str) -> None:
        try:
            first = [a[:1, ...] if hasattr(a, "shape") else a[:1] for a in (x, y)]
            evaluate(self.model, self.loss, *first, metrics=self.metrics, batch_size=1,
                     backend=self.backend, check=False)
        except ValueError as exc:
            raise ValueError(f"fit: {names} do not fit the model or loss: {exc}") from None

    def _loader(self, x: Any, y: Any) -> Any:
        y = as_host(y, "y_train")
        dtype = input_dtype(self.model)  # data as users have it: cast once, on the host
        labels = y if y.dtype.kind in "iu" else np.arange(num_examples(x))
        loader = BatchLoader(x, labels, self.batch_size, shuffle=True, rng=self.rng,
                             drop_last=self.drop_last, backend=self.backend, dtype=dtype,
                             shard=self.parallel.shard)
        return loader if y.dtype.kind in "iu" else \
            _TargetBatches(loader, y, self.backend, label_dtype(y, dtype))

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

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write model, optimizer, run state (counters, Generators, history), the callbacks'
        states, the base learning rate and the batch size atomically.

        With N ranks every rank calls this; they first verify that they hold the same model
        (ReplicaMismatch otherwise), then rank 0 alone writes.
        """
        self.parallel.check(f"before writing checkpoint {path}")
        if not self.parallel.comm.is_root:
            return Path(path)
        meta = {**self.state.state_dict(self.model), "backend": self.backend.name,
                "base_lr": self.lr, "batch_size": self.batch_size,
                "accumulate": self.accumulate, "train_size": self.train_size,
                "threads": self.threads,
                "callbacks": {c.key: c.state_dict() for c in self.callbacks if c.key}}
        return save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), meta)

    def resume(self, path: str | Path, *, override: dict[str, Any] | None = None,
               allow_nonfinite: bool = False) -> None:
        """Restore everything :meth:`save` wrote; ``fit`` then continues where it stopped.

        Every part is checked against this run first (the model's names, shapes and dtypes; the
        optimizer's class, settings and state; the schedule; the batch size; the learning rate;
        the callbacks' and the run state's saved values), then all are loaded: a checkpoint
        that does not fit raises :class:`~xpnet.io.checkpoint.ResumeMismatchError` naming ``path``
        and the differing setting, and nothing is changed. ``override={"lr": x}`` is the one
        deliberate change allowed: the run goes on with base rate ``x`` (the schedule keeps its
        position and shape). A callback whose state the file lacks starts afresh. The next
        ``fit`` must be given a training set of the saved size.

        The next ``fit`` trains with the thread count the saved run used (it changes the
        rounding; see :func:`xpnet.threads.adapt_threads`), unless the user set one.

        Weights or optimizer slots holding NaN or inf are refused unless
        ``allow_nonfinite=True`` (to inspect a diverged state, e.g. ``<name>.diverged.npz``).
        """
        override = check_override(override)
        allow_nonfinite = validate.flag("resume", "allow_nonfinite", allow_nonfinite)
        ck = load_checkpoint(path, model=self.model)  # the model bounds what is read
        check_resume(self, ck, path, override, allow_nonfinite=allow_nonfinite)
        apply_resume(self, ck, override, allow_nonfinite=allow_nonfinite)
        self.train_size = self._resumed_size = ck.meta["train_size"]
        # a file without it (written before it was saved): the thread policy decides
        self.threads = self._resumed_threads = ck.meta.get("threads")
        self.resumed_from, self.resumed_epoch = Path(path), self.state.epoch
