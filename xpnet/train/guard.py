"""Checks around training: the data before it starts, the loss while it runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..losses import SoftmaxCrossEntropy, check_labels
from ..module import Module

__all__ = ["DivergenceGuard", "TrainingDiverged", "check_data", "num_examples"]


def num_examples(a: Any) -> int:
    """Length of the leading axis of a host or device array (or a list)."""
    shape = getattr(a, "shape", None)
    return int(shape[0]) if shape else len(a)


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def check_data(model: Module, loss: Any, x: Any, y: Any, what: str) -> None:
    """Refuse data that cannot be trained on, naming ``what`` ('training data', 'test data').

    ``x`` and ``y`` may be host NumPy arrays or device arrays. Equal counts are required;
    integer class labels must lie in ``[0, model.num_classes)`` when the model declares it.
    """
    nx, ny = num_examples(x), num_examples(y)
    if nx != ny:
        raise ValueError(f"{what}: {nx} inputs but {ny} labels; expected equal counts")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None or not isinstance(loss, SoftmaxCrossEntropy):
        return
    y_host = np.asarray(to_numpy(y))
    if y_host.ndim == 1:
        check_labels(np, y_host, len(y_host), num_classes, f"{what} labels")


class DivergenceGuard:
    """Stops training (:class:`TrainingDiverged`) when the running loss is not finite.

    Called with each loss the Trainer reads anyway (once per log interval and at the end of an
    epoch), so it adds no host sync. ``checkpoint`` is named in the message: it holds the last
    good epoch, since a diverged epoch is never saved.
    """

    def __init__(self, checkpoint: str | Path | None = None):
        self.checkpoint = checkpoint

    def check(self, loss: float, epoch: int, step: int) -> None:
        """Raise unless ``loss`` is finite; ``epoch`` counts from 1, ``step`` within it."""
        if math.isfinite(loss):
            return
        kept = (f"; the last good checkpoint {self.checkpoint} was left untouched"
                if self.checkpoint else "")
        raise TrainingDiverged(f"training loss became {loss} at epoch {epoch}, step {step} "
                               f"(try a smaller learning rate or gradient clipping){kept}")
