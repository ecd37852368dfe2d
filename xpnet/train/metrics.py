"""Metrics counted during training and evaluation, summed on the device.

A :class:`Metric` turns one batch's output and target into a device scalar that *sums* over
the batch (e.g. the number of correct predictions); :class:`Totals` adds these up with the loss
and reads all of them back in a single host sync.
"""

from __future__ import annotations

from typing import Any, cast

from array_api_compat import array_namespace

from ..backend import to_numpy
from ..losses import SoftmaxCrossEntropy

__all__ = ["Accuracy", "MeanSquaredError", "Metric", "Totals", "default_metrics"]

Array = Any


class Metric:
    """Base class: ``name`` keys the history (``train_<name>``, ``test_<name>``);
    ``batch_sum(output, target)`` is a device scalar summed over the batch's examples; the
    metric's value is the total divided by the number of examples."""

    name = "metric"

    def batch_sum(self, output: Array, target: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """Fraction of examples whose largest output is the target class (integer labels, or the
    largest entry of one-hot / probability targets)."""

    name = "acc"

    def batch_sum(self, output: Array, target: Array) -> Array:
        xp = array_namespace(output)
        if target.ndim == 2:
            target = xp.argmax(target, axis=1)
        return xp.sum(xp.astype(xp.argmax(output, axis=1) == target, xp.int32))


class MeanSquaredError(Metric):
    """Mean over examples of the mean squared error of each example's outputs."""

    name = "mse"

    def batch_sum(self, output: Array, target: Array) -> Array:
        xp = array_namespace(output)
        d = output - xp.astype(target, output.dtype)
        d = xp.reshape(d * d, (d.shape[0], -1))
        return xp.sum(xp.mean(d, axis=1))


def default_metrics(loss: Any) -> list[Metric]:
    """Accuracy for a classification loss (:class:`SoftmaxCrossEntropy`), none otherwise."""
    return [Accuracy()] if isinstance(loss, SoftmaxCrossEntropy) else []


class Totals:
    """Running device sums of the loss and the metrics over a pass.

    ``weighted`` False (training): the loss is the mean of the batch means, as a training loop
    reports it. True (evaluation): each batch mean is weighted by its size, giving the exact
    mean over examples. The per-batch losses are kept on the device too, so the per-step
    history costs no extra sync: :meth:`read` returns everything at once.
    """

    def __init__(self, metrics: list[Metric], *, weighted: bool = False,
                 keep_steps: bool = False):
        self.metrics, self.weighted, self.keep_steps = list(metrics), weighted, keep_steps
        self.loss_sum: Array | None = None
        self.sums: list[Array | None] = [None] * len(self.metrics)
        self.step_losses: list[Array] = []
        self.seen = self.steps = 0

    def add(self, loss: Array, output: Array, target: Array) -> None:
        """Add one batch (no host sync)."""
        n = output.shape[0]
        if self.weighted:
            xp = array_namespace(loss)
            term = xp.astype(loss, xp.float64) * n
        else:
            term = loss
        self.loss_sum = term if self.loss_sum is None else self.loss_sum + term
        for i, m in enumerate(self.metrics):
            s = m.batch_sum(output, target)
            self.sums[i] = s if self.sums[i] is None else self.sums[i] + s
        if self.keep_steps:
            self.step_losses.append(loss)
        self.seen += n
        self.steps += 1

    def mean_loss(self) -> float:
        """The running mean loss: one host sync (call it once per log interval)."""
        denominator = self.seen if self.weighted else self.steps
        # read only after add(); before it, float(None) raises TypeError as it always has
        return float(cast(Array, self.loss_sum)) / denominator

    def read(self) -> tuple[dict[str, float], list[float]]:
        """``({"loss": ..., <metric name>: ...}, per-step losses)`` in one host sync."""
        if self.steps == 0:
            raise ValueError("no batches were seen")
        xp = array_namespace(self.loss_sum)
        parts = [self.loss_sum, *self.sums, *self.step_losses]
        values = to_numpy(xp.stack([xp.astype(v, xp.float64) for v in parts]))
        out = {"loss": float(values[0]) / (self.seen if self.weighted else self.steps)}
        for i, m in enumerate(self.metrics):
            out[m.name] = float(values[1 + i]) / self.seen
        return out, [float(v) for v in values[1 + len(self.metrics):]]
