"""Callbacks: everything the Trainer does besides training steps is a :class:`Callback`.

A callback overrides some of seven events, which :meth:`Trainer.fit <xpnet.train.Trainer.fit>`
fires in this order::

    on_fit_start(trainer)
      per epoch:  on_epoch_start(trainer, epoch)
        per batch:  on_batch_end(trainer, batch, out, loss)   (every micro-batch)
                    on_step_end(trainer, step)                (after each optimizer step)
                  on_evaluate_start(trainer, examples)        (with test data only)
                  on_epoch_end(trainer, record)               (counters and history updated)
    on_fit_end(trainer)                                       (also when fit raises)

At each event the callbacks run by descending ``priority`` (ties: the order given to the
Trainer). The built-in priorities put the divergence guard first (100), then the progress
output (90), the schedule (50), early stopping (10), your own callbacks (0), keep-best (-50) and
the checkpoint last (-100), so that a checkpoint holds every other callback's new state.

A callback with state for resuming returns it from ``state_dict`` (JSON values) and names it by
``key``; ``check_state_dict`` refuses a state that does not fit before anything is loaded (a
resume checks every object first, then loads them all). A callback stops training by setting
``trainer.stopped_early = True``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import validate
from ..module import StateDictError
from ..precision import LossScaler
from ..schedules import Schedule

__all__ = ["Callback", "EarlyStopping", "KeepBest", "LRSchedule", "LossScaling",
           "SaveCheckpoint"]


class Callback:
    """Base class: every event does nothing and there is no state to save.

    ``priority``: higher runs earlier at every event. ``key``: the name of the callback's state
    in a checkpoint (None: nothing to save). ``monitor``: the history key it reads, if any
    (``fit`` refuses a ``test_`` key without test data before training).
    """

    priority: int = 0
    key: str | None = None
    monitor: str | None = None

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first epoch of a ``fit`` (after its data checks)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Before the epoch's first batch; ``epoch`` counts from 1."""

    def on_batch_end(self, trainer: Any, batch: int, out: Any, loss: float | None) -> None:
        """After a batch's forward and backward (and the optimizer step, if one was due).

        ``batch`` counts from 1 within the epoch; ``out`` is the :class:`StepOutput` (device
        arrays: reading one is a host sync); ``loss`` is the epoch's running mean loss, read
        every ``log_interval`` batches and None in between.
        """

    def on_step_end(self, trainer: Any, step: int) -> None:
        """After an optimizer step; ``step`` is the run's step count (``trainer.step_count``)."""

    def on_evaluate_start(self, trainer: Any, examples: int) -> None:
        """After the epoch's last batch, before evaluating on the ``examples`` test examples."""

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        """After the epoch's evaluation; ``record`` is the epoch's history record, already in
        ``trainer.history``, and ``trainer.epoch`` counts this epoch."""

    def on_fit_end(self, trainer: Any) -> None:
        """When ``fit`` returns or raises."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def check_state_dict(self, state: Any) -> None:
        """Raise :class:`~xpnet.module.StateDictError` unless ``state`` fits; changes nothing."""
        _require(self, state, ())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)


def _require(owner: Any, state: Any, keys: tuple[str, ...]) -> None:
    """StateDictError unless ``state`` is a dict holding ``keys``."""
    name = type(owner).__name__
    if not isinstance(state, dict):
        raise StateDictError(f"{name}: a saved state must be a dict, got "
                             f"{type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise StateDictError(f"{name}: the saved state lacks {missing}; expected the keys "
                             f"{list(keys)} of {name}.state_dict()")


class LRSchedule(Callback):
    """Steps ``schedule`` after every epoch, or after every optimizer step if the schedule's
    ``per_step`` is set; its position is saved with the run."""

    priority = 50
    key = "schedule"

    def __init__(self, schedule: Schedule):
        self.schedule: Schedule = validate.instance("LRSchedule", "schedule", schedule,
                                                    Schedule, "an xpnet Schedule")

    def on_step_end(self, trainer: Any, step: int) -> None:
        if self.schedule.per_step:
            self.schedule.step()

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        if not self.schedule.per_step:
            self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def check_state_dict(self, state: Any) -> None:
        self.schedule.check_state_dict(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)

    def __repr__(self) -> str:
        return f"LRSchedule({type(self.schedule).__name__})"


class LossScaling(Callback):
    """Dynamic loss scaling for ``precision="mixed16"`` (the Trainer adds one there unless
    given): the Trainer's steps scale the loss by ``scaler.scale`` and unscale the gradients
    before the optimizer step (see :class:`xpnet.precision.LossScaler`); a step with inf/NaN
    gradients is skipped and the scale halved. Each epoch record gets ``loss_scale`` (the
    scale now) and ``skipped_steps`` (skipped so far in the run); the scaler is saved with the
    run, so a resumed run scales as an uninterrupted one. ``bf16`` has float32's range and
    needs none."""

    key = "loss_scaling"

    def __init__(self, scaler: LossScaler | None = None):
        self.scaler: LossScaler = validate.instance(
            "LossScaling", "scaler", scaler if scaler is not None else LossScaler(),
            LossScaler, "an xpnet.precision.LossScaler")

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        record["loss_scale"] = self.scaler.scale
        record["skipped_steps"] = self.scaler.skipped

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def check_state_dict(self, state: Any) -> None:
        self.scaler.check_state_dict(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)

    def __repr__(self) -> str:
        return f"LossScaling(scale={self.scaler.scale:g})"


class SaveCheckpoint(Callback):
    """Writes the whole run (``trainer.save``) to ``path`` after every epoch, atomically; a
    diverged epoch is never written there (the guard runs first)."""

    priority = -100

    def __init__(self, path: str | Path):
        self.path = validate.file_path("SaveCheckpoint", "path", path)

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        trainer.save(self.path)

    def __repr__(self) -> str:
        return f"SaveCheckpoint({str(self.path)!r})"


class _Monitor(Callback):
    """Tracks the best value of one history key; ``mode`` 'min', 'max' or 'auto' (max for
    accuracies, min otherwise)."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        owner = type(self).__name__
        validate.instance(owner, "monitor", monitor, str, "a history key such as 'test_loss'")
        mode = validate.choice(owner, "mode", mode, ("min", "max", "auto"))
        if mode == "auto":
            mode = "max" if monitor.endswith(("acc", "accuracy")) else "min"
        self.monitor, self.mode = monitor, mode
        self.min_delta = validate.non_negative_float(owner, "min_delta", min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.key = f"{owner}({monitor})"

    def _improved(self, record: dict[str, float]) -> bool:
        if self.monitor not in record:
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not in the "
                             f"epoch record; expected one of {sorted(record)}")
        value = record[self.monitor]
        better = value < self.best - self.min_delta if self.mode == "min" \
            else value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch = value, int(record["epoch"])
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def check_state_dict(self, state: Any) -> None:
        _require(self, state, ("best", "best_epoch"))
        owner = type(self).__name__
        validate.not_nan(owner, "saved best", state["best"])
        validate.non_negative_int(owner, "saved best_epoch", state["best_epoch"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved (by more than ``min_delta``) for ``patience``
    epochs in a row. ``trainer.stopped_early`` is then True; the history keeps every epoch."""

    priority = 10

    def __init__(self, monitor: str = "test_loss", patience: int = 3, *, mode: str = "auto",
                 min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.patience = validate.positive_int("EarlyStopping", "patience", patience)
        self.wait = 0

    def on_fit_start(self, trainer: Any) -> None:
        # a resumed (or refitted) run that had already stopped stays stopped where it stopped
        if self.wait >= self.patience:
            trainer.stopped_early = True

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        self.wait = 0 if self._improved(record) else self.wait + 1
        if self.wait >= self.patience:
            trainer.stopped_early = True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait}

    def check_state_dict(self, state: Any) -> None:
        super().check_state_dict(state)
        _require(self, state, ("wait",))
        validate.non_negative_int("EarlyStopping", "saved wait", state["wait"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait = int(state["wait"])

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience})"


class KeepBest(_Monitor):
    """Save a full checkpoint (``trainer.save``) to ``path`` whenever ``monitor`` improves; the
    file then holds the best epoch's model, loadable with ``trainer.resume`` or
    ``xpnet.io.checkpoint.load_checkpoint(path).model``."""

    priority = -50

    def __init__(self, path: str | Path, monitor: str = "test_loss", *, mode: str = "auto"):
        super().__init__(monitor, mode)
        self.path = validate.file_path("KeepBest", "path", path)

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        if self._improved(record):
            trainer.save(self.path)

    def __repr__(self) -> str:
        return f"KeepBest({str(self.path)!r}, monitor={self.monitor!r})"
