"""One training step: forward, loss, backward and (optionally) the optimizer step."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..module import Module
from ..optim import Optimizer

__all__ = ["StepOutput", "train_step"]

Array = Any


class StepOutput(NamedTuple):
    """What a step leaves on the device: the batch's mean loss (0-d) and the model output,
    from which metrics are counted. Neither is read back to the host."""

    loss: Array
    output: Array


def train_step(model: Module, loss: Any, optimizer: Optimizer | None, xb: Array, yb: Array,
               *, step: bool = True) -> StepOutput:
    """Forward ``xb``, the loss against ``yb``, backward into ``param.grad``, then
    ``optimizer.step()`` unless ``step`` is False (a micro-batch of gradient accumulation) or
    there is no optimizer.

    The model is not put into training mode here (the caller decides); nothing is synced with
    the host, so a GPU run keeps queueing work.
    """
    out = model.forward(xb)
    value = loss.forward(out, yb)
    model.backward(loss.backward(), input_grad=False)
    if step and optimizer is not None:
        optimizer.step()
    return StepOutput(value, out)
