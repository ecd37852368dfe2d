"""Callbacks run by the Trainer at the end of every epoch: early stopping, keep-best checkpoints.

A callback's ``on_epoch_end(trainer, record)`` sees the epoch's history record (``loss``,
``train_acc``, ``test_loss``, ``test_acc``, ...) and returns True to stop training. Its
``state_dict`` is saved in the Trainer's checkpoints, so a resumed run stops where an
uninterrupted one would.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import validate

__all__ = ["Callback", "EarlyStopping", "KeepBest"]


class Callback:
    """Base class: does nothing, saves nothing."""

    monitor: str | None = None

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _Monitor(Callback):
    """Tracks the best value of one history key; ``mode`` 'min', 'max' or 'auto' (max for
    accuracies, min otherwise)."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode == "auto":
            mode = "max" if monitor.endswith(("acc", "accuracy")) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'min', 'max' or 'auto', "
                             f"got {mode!r}")
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(f"{type(self).__name__}: min_delta must be a non-negative number, "
                             f"got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved (by more than ``min_delta``) for ``patience``
    epochs in a row. ``trainer.stopped_early`` is then True; the history keeps every epoch."""

    def __init__(self, monitor: str = "test_loss", patience: int = 3, *, mode: str = "auto",
                 min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.patience = validate.positive_int("EarlyStopping", "patience", patience)
        self.wait = 0

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> bool:
        self.wait = 0 if self._improved(record) else self.wait + 1
        return self.wait >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait = int(state["wait"])

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience})"


class KeepBest(_Monitor):
    """Save a full checkpoint (``trainer.save``) to ``path`` whenever ``monitor`` improves; the
    file then holds the best epoch's model, loadable with ``trainer.resume`` or
    ``xpnet.checkpoint.load_checkpoint(path).model``."""

    def __init__(self, path: str | Path, monitor: str = "test_loss", *, mode: str = "auto"):
        super().__init__(monitor, mode)
        self.path = Path(path)

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> bool:
        if self._improved(record):
            trainer.save(self.path)
        return False

    def __repr__(self) -> str:
        return f"KeepBest({str(self.path)!r}, monitor={self.monitor!r})"
