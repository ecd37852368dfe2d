"""One training step: forward, loss, backward and (optionally) the optimizer step."""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import precision
from ..module import Module
from ..optim import Optimizer
from ..precision import LossScaler

__all__ = ["StepOutput", "train_step"]

Array = Any


class StepOutput(NamedTuple):
    """What a step leaves on the device: the batch's mean loss (0-d) and the model output,
    from which metrics are counted. Neither is read back to the host."""

    loss: Array
    output: Array


def train_step(model: Module, loss: Any, optimizer: Optimizer | None, xb: Array, yb: Array,
               *, step: bool = True, grad_scale: float = 1.0,
               scaler: LossScaler | None = None) -> StepOutput:
    """Forward ``xb``, the loss against ``yb``, backward into ``param.grad``, then
    ``optimizer.step()`` unless ``step`` is False (a micro-batch of gradient accumulation) or
    there is no optimizer.

    ``grad_scale`` multiplies the loss gradient before backward: ``1/K`` for each of K
    accumulated micro-batches makes their summed gradients a mean; with N ranks it also
    carries this rank's weight in an unevenly split global batch. The loss value returned is
    not scaled.

    With a :class:`~xpnet.precision.LossScaler` the loss gradient is also multiplied by its
    scale, and the gradients are unscaled before the optimizer step, which is skipped when one
    is not finite. Under :func:`xpnet.precision.autocast` the model output is cast to float32
    before the loss.

    The model is not put into training mode here (the caller decides); nothing is synced with
    the host, so a GPU run keeps queueing work.
    """
    out = precision.output(model.forward(xb))
    value = loss.forward(out, yb)
    dout = loss.backward()
    if scaler is not None:
        grad_scale *= scaler.scale
    model.backward(dout if grad_scale == 1.0 else dout * grad_scale, input_grad=False)
    if step and optimizer is not None:
        if scaler is None or scaler.unscale(optimizer.trainable()):
            optimizer.step()
    return StepOutput(value, out)
