"""The divergence guard: a callback that stops training when the loss diverges."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import validate
from .callbacks import Callback, SaveCheckpoint

__all__ = ["DivergenceGuard", "TrainingDiverged", "diverged_path"]


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite, or grew beyond the guard's factor."""


def diverged_path(checkpoint: str | Path) -> Path:
    """Where a diverged state is saved for inspection: ``CK.diverged.npz`` beside ``CK``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.diverged{path.suffix or '.npz'}")


class DivergenceGuard(Callback):
    """Stops training (:class:`TrainingDiverged`) when the loss diverges.

    The rule: a loss read (the running loss every ``log_interval`` batches and the epoch's
    loss, reads the Trainer makes anyway, so no extra host sync) diverged when it is NaN or
    infinite, or when it is above ``factor`` times the reference: the loss of the run's first
    batch (read once per run, before any update has changed the model). ``factor=1e3`` by
    default, ``factor=None`` checks finiteness only.

    ``checkpoint`` (default: the path of the trainer's :class:`SaveCheckpoint`) is named in the
    message: it holds the last good epoch, since the guard runs before the checkpoint at every
    event. The diverged state is saved beside it, as ``<name>.diverged.npz``, for inspection.
    """

    priority = 100

    def __init__(self, checkpoint: str | Path | None = None, factor: float | None = 1e3):
        self.checkpoint = None if checkpoint is None else \
            validate.file_path("DivergenceGuard", "checkpoint", checkpoint)
        self.factor = None if factor is None else \
            validate.real_in_range("DivergenceGuard", "factor", factor,
                                   "a finite number > 1 or None", low=1.0, low_open=True)
        self.reference: float | None = None
        self._epoch = self._batch = 0
        self._path: Path | None = self.checkpoint
        self._source: Path | None = None  # the checkpoint a resumed run started from

    def set_reference(self, loss: float) -> None:
        """The loss divergence is measured against (a finite one; NaN is caught by check)."""
        if math.isfinite(loss):
            self.reference = abs(loss)

    def check(self, loss: float, epoch: int, step: int) -> None:
        """Raise if ``loss`` diverged; ``epoch`` counts from 1, ``step`` within it."""
        if math.isfinite(loss):
            if self.reference is None:
                self.reference = abs(loss)
            if self.factor is None or self.reference == 0 \
                    or loss <= self.factor * self.reference:
                return
            why = (f"training loss {loss:.4g} at epoch {epoch}, step {step} is more than "
                   f"{self.factor:g} times the first loss of this run ({self.reference:.4g})")
        else:
            why = f"training loss became {loss} at epoch {epoch}, step {step}"
        kept = ""
        if self._path is not None:
            kept = (f"; the last good checkpoint {self._path} was left untouched"
                    if self._path.exists() else
                    f"; no good epoch to keep, {self._path} was not written")
        if self._source is not None:  # diverged before the resumed run finished an epoch
            raise TrainingDiverged(f"{why}, in the first epoch after resuming from "
                                   f"{self._source}: that checkpoint's state is the likely "
                                   f"source (check how it was written){kept}")
        raise TrainingDiverged(f"{why} (try a smaller learning rate or gradient clipping)"
                               f"{kept}")

    # ------------------------------------------------------------------ events
    def on_fit_start(self, trainer: Any) -> None:
        if self.checkpoint is None:
            saver = [c for c in trainer.callbacks if isinstance(c, SaveCheckpoint)]
            self._path = saver[0].path if saver else None
        resumed = getattr(trainer, "resumed_from", None)
        self._source = resumed if resumed is not None and trainer.epoch == getattr(
            trainer, "resumed_epoch", -1) else None

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._epoch, self._batch = epoch, 0

    def on_batch_end(self, trainer: Any, batch: int, out: Any, loss: float | None) -> None:
        self._batch = batch
        if self.reference is None:  # one host read per run: the first batch's loss
            self.set_reference(float(out.loss))
        if loss is not None:
            self._checked(trainer, loss)

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        self._checked(trainer, record["loss"])
        self._source = None  # an epoch went well after the resume

    def _checked(self, trainer: Any, loss: float) -> None:
        try:
            self.check(loss, self._epoch, self._batch)
        except TrainingDiverged as exc:
            raise self._save_diverged(trainer, exc) from None

    def _save_diverged(self, trainer: Any, exc: TrainingDiverged) -> TrainingDiverged:
        """Save the diverged state beside the checkpoint (never over it) for inspection;
        return the error to raise, naming that file."""
        if self._path is None:
            return exc
        path = diverged_path(self._path)
        try:
            trainer.save(path)
        except (OSError, ValueError) as save_exc:
            return TrainingDiverged(f"{exc}; saving the diverged state to {path} failed too "
                                    f"({save_exc})")
        return TrainingDiverged(f"{exc}; the diverged state was saved to {path} for "
                                "inspection")

    def __repr__(self) -> str:
        return f"DivergenceGuard(factor={self.factor})"
