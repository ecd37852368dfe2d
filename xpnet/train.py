"""Training: epochs, evaluation, progress, history, NaN guard, schedules and checkpoints.

The training step keeps everything on the device: the loss sum and the count of correct
predictions are accumulated as device scalars and read back only at a log interval and at the
end of an epoch (the host syncs).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .backend import Backend, current, to_device, to_numpy
from .checkpoint import load_checkpoint, save_checkpoint
from .data.loader import BatchLoader
from .losses import SoftmaxCrossEntropy, check_labels
from .module import Module
from .optim import Optimizer
from .rng import Generator
from .schedules import Schedule

__all__ = ["History", "Trainer", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class History:
    """Per-epoch records: epoch, loss, train_acc, test_loss, test_acc, lr (the mean learning
    rate of the epoch's steps), seconds."""

    records: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [r.get(key, math.nan) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.records, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def _dropout_generators(model: Module) -> dict[str, Generator]:
    """Every Generator held by a layer (Dropout masks), keyed by the layer's path."""
    found: dict[str, Generator] = {}

    def walk(m: Module, prefix: str) -> None:
        if isinstance(getattr(m, "rng", None), Generator):
            found[prefix or "."] = m.rng
        for name, child in m.children():
            walk(child, f"{prefix}{name}.")

    walk(model, "")
    return found


class Trainer:
    """Train a model with an optimizer on (x, y) host arrays.

    Parameters
    ----------
    model, optimizer : the model (its parameters already on the backend) and its optimizer.
    loss : defaults to :class:`SoftmaxCrossEntropy`.
    schedule : an LR schedule, stepped once per epoch (per optimizer step if its
        ``per_step`` is True).
    batch_size : images per step; the last partial batch is kept.
    seed : seeds the batch order.
    progress : show a tqdm bar per epoch (default: only when stderr is a terminal).
    verbose : print one line per epoch to stderr.
    log_interval : steps between host reads of the running loss (progress bar, NaN guard).
    checkpoint : path written after every epoch (atomically), if given.
    """

    def __init__(self, model: Module, optimizer: Optimizer, loss: Any = None, *,
                 schedule: Schedule | None = None, batch_size: int = 100, seed: int = 0,
                 progress: bool | None = None, verbose: bool = False, log_interval: int = 50,
                 checkpoint: str | Path | None = None, eval_batch_size: int = 1000,
                 backend: Backend | None = None):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model, self.optimizer = model, optimizer
        self.loss = loss if loss is not None else SoftmaxCrossEntropy(check_range=False)
        self.schedule = schedule
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.rng = Generator(seed)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.verbose, self.log_interval = verbose, max(1, log_interval)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.backend = backend or current()
        self.history = History()
        self.epoch = 0
        self.step_count = 0
        self.train_seconds = 0.0

    # ------------------------------------------------------------------ data checks
    def _check_data(self, x: Any, y: Any, what: str) -> None:
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} inputs but {len(y)} labels; expected equal counts")
        num_classes = getattr(self.model, "num_classes", None)
        y = np.asarray(y)
        if num_classes is not None and y.ndim == 1:
            check_labels(np, y, len(y), num_classes, f"{what} labels")

    # ------------------------------------------------------------------ one epoch
    def _backward(self, dout: Any) -> None:
        self.model.backward(dout, input_grad=False)

    def train_epoch(self, loader: Iterable[tuple[Any, Any]], total: int | None = None
                    ) -> tuple[float, float]:
        """One pass over ``loader``; returns (mean loss, training accuracy)."""
        from tqdm.auto import tqdm

        self.model.train()
        loss_sum = correct = None
        seen = steps = 0
        # an iterator, not the loader: tqdm.auto's async variant calls iter() on what it is
        # given in __init__ and again to loop, which would draw (and waste) a second shuffle
        bar = tqdm(iter(loader), total=total, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}", unit="batch", file=sys.stderr)
        lr_sum = 0.0
        for xb, yb in bar:
            logits = self.model.forward(xb)
            loss = self.loss.forward(logits, yb)
            self._backward(self.loss.backward())
            lr_sum += self.optimizer.lr
            self.optimizer.step()
            if self.schedule is not None and self.schedule.per_step:
                self.schedule.step()
            xp = array_namespace(logits)
            hits = xp.sum(xp.astype(xp.argmax(logits, axis=1) == yb, xp.int32))
            loss_sum = loss if loss_sum is None else loss_sum + loss
            correct = hits if correct is None else correct + hits
            seen += logits.shape[0]
            steps += 1
            self.step_count += 1
            if steps % self.log_interval == 0:
                running = float(loss_sum) / steps  # the one host sync per interval
                self._guard(running, steps)
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        bar.close()
        if steps == 0:
            raise ValueError("the training loader yielded no batches")
        mean_loss = float(loss_sum) / steps
        self._guard(mean_loss, steps)
        self.epoch_mean_lr = lr_sum / steps  # for the history: per-step schedules vary it
        return mean_loss, int(correct) / seen

    def _guard(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            where = f"epoch {self.epoch + 1}, step {step}"
            kept = (f"; the last good checkpoint {self.checkpoint} was left untouched"
                    if self.checkpoint else "")
            raise TrainingDiverged(f"training loss became {loss} at {where} (try a smaller "
                                   f"learning rate or gradient clipping){kept}")

    # ------------------------------------------------------------------ fit / evaluate
    def fit(self, x_train: Any, y_train: Any, epochs: int, *, x_test: Any = None,
            y_test: Any = None) -> History:
        """Train until ``epochs`` epochs are done in total (a resumed trainer continues).

        Evaluates on (x_test, y_test) after each epoch when given; writes a checkpoint after
        each epoch when the trainer has a checkpoint path.
        """
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        self._check_data(x_train, y_train, "training data")
        if x_test is not None:
            self._check_data(x_test, y_test, "test data")
        loader = BatchLoader(x_train, y_train, self.batch_size, shuffle=True, rng=self.rng,
                             backend=self.backend)
        while self.epoch < epochs:
            t0 = time.perf_counter()
            loss, acc = self.train_epoch(loader, total=len(loader))
            seconds = time.perf_counter() - t0
            lr = self.epoch_mean_lr
            self.train_seconds += seconds
            record = {"epoch": self.epoch + 1, "loss": loss, "train_acc": acc, "lr": lr,
                      "seconds": seconds}
            if x_test is not None:
                record["test_loss"], record["test_acc"] = self.evaluate(x_test, y_test)
            self.epoch += 1
            if self.schedule is not None and not self.schedule.per_step:
                self.schedule.step()
            self.history.records.append(record)
            if self.verbose:
                print(self._epoch_line(record), file=sys.stderr)
            if self.checkpoint is not None:
                self.save(self.checkpoint)
        return self.history

    @staticmethod
    def _epoch_line(r: dict[str, float]) -> str:
        line = (f"epoch {r['epoch']:>3}  loss {r['loss']:.4f}  train acc {r['train_acc']:.4f}"
                f"  lr {r['lr']:.3g}  {r['seconds']:.1f}s")
        if "test_acc" in r:
            line += f"  test loss {r['test_loss']:.4f}  test acc {r['test_acc']:.4f}"
        return line

    def _batches(self, x: Any):
        for i in range(0, len(x), self.eval_batch_size):
            yield i, to_device(x[i:i + self.eval_batch_size], backend=self.backend)

    def evaluate(self, x: Any, y: Any) -> tuple[float, float]:
        """(mean loss, accuracy) on host arrays, in evaluation mode, batch by batch."""
        was_training = self.model.training
        self.model.eval()
        loss_fn = SoftmaxCrossEntropy(check_range=False) \
            if isinstance(self.loss, SoftmaxCrossEntropy) else self.loss
        total_loss = correct = 0.0
        try:
            for i, xb in self._batches(x):
                yb = to_device(np.asarray(y[i:i + self.eval_batch_size]), backend=self.backend)
                logits = self.model.forward(xb)
                xp = array_namespace(logits)
                n = logits.shape[0]
                total_loss += float(loss_fn.forward(logits, yb)) * n
                correct += int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == yb, xp.int32)))
        finally:
            self.model.train(was_training)
        return total_loss / len(x), correct / len(x)

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class indices for host inputs, as a NumPy array."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for _, xb in self._batches(x):
                logits = self.model.forward(xb)
                out.append(to_numpy(array_namespace(logits).argmax(logits, axis=1)))
        finally:
            self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write model, optimizer, schedule, RNG states, counters and history atomically."""
        meta = {
            "epoch": self.epoch, "step": self.step_count, "train_seconds": self.train_seconds,
            "rng": self.rng.get_state(),
            "layer_rngs": {k: g.get_state() for k, g in _dropout_generators(self.model).items()},
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "history": self.history.records, "backend": self.backend.name,
        }
        return save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), meta)

    def resume(self, path: str | Path) -> None:
        """Restore everything :meth:`save` wrote; ``fit`` then continues where it stopped."""
        ck = load_checkpoint(path)
        meta = ck.meta
        # the schedule first: a mismatch is refused before anything else is overwritten
        saved = meta.get("schedule")
        if (self.schedule is None) != (saved is None):
            ours = "none" if self.schedule is None else type(self.schedule).__name__
            raise ValueError(f"{path}: saved {'with' if saved else 'without'} a learning-rate "
                             f"schedule, but this trainer's schedule is {ours}; resume with "
                             "the schedule the run started with (for the examples: the same "
                             "--schedule)")
        if saved is not None:
            self.schedule.load_state_dict(saved)
        self.model.load_state_dict(ck.model, backend=self.backend)
        # the optimizer holds the same Parameter objects, whose data was just replaced
        if ck.optimizer is not None:
            self.optimizer.load_state_dict(ck.optimizer)
        self.epoch, self.step_count = int(meta["epoch"]), int(meta["step"])
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.rng.set_state(meta["rng"])
        gens = _dropout_generators(self.model)
        for k, state in meta.get("layer_rngs", {}).items():
            if k in gens:
                gens[k].set_state(state)
        self.history = History(list(meta.get("history", [])))
