"""Checks around training: the data before it starts, the loss while it runs."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace

from ..backend import to_numpy
from ..losses import SoftmaxCrossEntropy
from ..module import Module
from ..validate import positive_int, real_in_range

__all__ = ["DivergenceGuard", "TrainingDiverged", "check_data", "check_finite", "check_targets",
           "diverged_path", "num_examples"]


def num_examples(a: Any) -> int:
    """Length of the leading axis of a host or device array (or a list)."""
    shape = getattr(a, "shape", None)
    return int(shape[0]) if shape else len(a)


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite, or grew beyond the guard's factor."""


def check_data(model: Module, loss: Any, x: Any, y: Any, what: str, *,
               names: tuple[str, str] | None = None) -> None:
    """Refuse data that cannot be trained on, naming ``what`` ('training data', 'test data')
    and the array (``names``, e.g. ``("x_train", "y_train")``).

    ``x`` and ``y`` may be host NumPy arrays or device arrays. Required: equal counts, at least
    one example, finite inputs (one vectorised pass; a device array costs one reduction and
    one host read) and, for cross-entropy with a model that declares ``num_classes``, integer
    labels in ``[0, num_classes)``. The first bad row is named.
    """
    names = names or (f"{what} inputs", f"{what} labels")
    nx, ny = num_examples(x), num_examples(y)
    if nx != ny:
        raise ValueError(f"{what}: {nx} inputs but {ny} labels; expected equal counts")
    if nx == 0:
        raise ValueError(f"{what}: {names[0]} is empty; expected at least one example")
    check_finite(x, names[0])
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(loss, SoftmaxCrossEntropy):
        return
    check_targets(y, names[1], num_classes)


def check_finite(x: Any, name: str) -> None:
    """ValueError naming ``name``, the problem (NaN or inf) and the first bad row, unless every
    value of ``x`` (host or device, floating) is finite. One reduction when all is well."""
    if array_api_compat.is_array_api_obj(x) and not isinstance(x, np.ndarray):
        xp = array_namespace(x)
        if not xp.isdtype(x.dtype, "real floating") or bool(xp.all(xp.isfinite(x))):
            return
        x = to_numpy(x)  # only on the failure path
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return
    finite = np.isfinite(x)
    if finite.all():
        return
    rows = ~finite.reshape(len(x), -1).all(axis=1)
    first = int(np.argmax(rows))
    bad = x[first][~finite[first]]
    kind = "NaN" if np.isnan(bad).any() else "an infinite value"
    raise ValueError(f"{name}: row {first} holds {kind} ({int(rows.sum())} of {len(x)} rows "
                     "hold NaN or inf); expected finite values: clean or drop those rows")


def check_targets(y: Any, name: str, num_classes: int | None) -> None:
    """ValueError naming ``name``, the value and its first row, unless integer labels ``y``
    (host or device) lie in ``[0, num_classes)``; float (soft) targets must be finite."""
    if array_api_compat.is_array_api_obj(y) and not isinstance(y, np.ndarray):
        xp = array_namespace(y)
        if xp.isdtype(y.dtype, "real floating"):
            check_finite(y, name)
            return
        if num_classes is None or y.ndim != 1:
            return
        lo, hi = xp.min(y), xp.max(y)
        if 0 <= int(lo) and int(hi) < num_classes:
            return
        y = to_numpy(y)
    y = np.asarray(y)
    if y.dtype.kind == "f":
        check_finite(y, name)
        return
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name}: class labels must be integers, got dtype {y.dtype}")
    if num_classes is None or y.ndim != 1 or len(y) == 0:
        return
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"{name}: row {first} holds label {int(y[first])} "
                         f"({int(bad.sum())} of {len(y)} labels out of range); expected labels "
                         f"in [0, {num_classes - 1}] for {num_classes} classes")


def check_trainer_args(model: Any, optimizer: Any, schedule: Any, log_interval: Any,
                       checkpoint: Any) -> None:
    """The Trainer's arguments of the wrong kind, refused before anything is built."""
    from ..optim import Optimizer
    from ..schedules import Schedule

    if not isinstance(model, Module):
        raise TypeError(f"Trainer: model must be an xpnet Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Trainer: optimizer must be an xpnet Optimizer (e.g. "
                        f"xpnet.Adam(model)), got {optimizer!r}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"Trainer: schedule must be an xpnet Schedule or None, got "
                        f"{schedule!r}")
    if schedule is not None and schedule.optimizer is not optimizer:
        raise ValueError("Trainer: the schedule drives another optimizer than the trainer's; "
                         "expected a schedule built on this optimizer")
    positive_int("Trainer", "log_interval", log_interval)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"Trainer: checkpoint must be a file path (str or Path) or None, got "
                        f"{checkpoint!r}")


def diverged_path(checkpoint: str | Path) -> Path:
    """Where a diverged state is saved for inspection: ``CK.diverged.npz`` beside ``CK``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.diverged{path.suffix or '.npz'}")


class DivergenceGuard:
    """Stops training (:class:`TrainingDiverged`) when the loss diverges.

    The rule: a loss read (once per log interval and at the end of an epoch, reads the Trainer
    makes anyway, so no extra host sync) diverged when it is NaN or infinite, or when it is
    above ``factor`` times the reference: the loss of the run's first step (read once per
    run, before any update has changed the model), else the first loss checked:
    ``factor=1e3`` by default,
    ``factor=None`` checks finiteness only. ``checkpoint`` is named in the message: it holds the
    last good epoch, since a diverged epoch is never saved there.
    """

    def __init__(self, checkpoint: str | Path | None = None, factor: float | None = 1e3):
        self.checkpoint = checkpoint
        self.factor = None if factor is None else \
            real_in_range("DivergenceGuard", "factor", factor, "a finite number > 1 or None",
                          low=1.0, low_open=True)
        self.reference: float | None = None

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
        if self.checkpoint is not None:
            kept = (f"; the last good checkpoint {self.checkpoint} was left untouched"
                    if Path(self.checkpoint).exists() else
                    f"; no good epoch to keep, {self.checkpoint} was not written")
        raise TrainingDiverged(f"{why} (try a smaller learning rate or gradient clipping)"
                               f"{kept}")
