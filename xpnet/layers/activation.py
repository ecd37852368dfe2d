"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh, GELU, ELU, Identity, and Softmax.

Each keeps in ``forward`` only what its ``backward`` needs, per call.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from .. import validate
from ..grad_mode import grad_enabled
from ..module import Module

__all__ = ["ELU", "GELU", "Identity", "LeakyReLU", "ReLU", "Sigmoid", "Softmax", "Tanh"]

Array = Any

_C = math.sqrt(2.0 / math.pi)


class ReLU(Module):
    """max(x, 0). The backward mask is kept as a float array: multiplying by it is several
    times faster than ``where`` with a scalar on NumPy."""

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        if grad_enabled():
            self.save_for_backward(xp.astype(x > 0, x.dtype))
        return xp.maximum(x, 0.0)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (mask,) = self.saved()
        return dout * mask


class LeakyReLU(Module):
    """x for x > 0, slope * x otherwise."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = validate.non_negative_float("LeakyReLU", "slope", slope)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"

    def forward(self, x: Array) -> Array:
        mask = x > 0
        self.save_for_backward(mask)
        return array_namespace(x).where(mask, x, self.slope * x)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (mask,) = self.saved()
        return array_namespace(dout).where(mask, dout, self.slope * dout)


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        self.save_for_backward(y)
        return y

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (y,) = self.saved()
        return dout * y * (1.0 - y)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x: Array) -> Array:
        y = array_namespace(x).tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (y,) = self.saved()
        return dout * (1.0 - y * y)


class GELU(Module):
    """Gaussian error linear unit, in the tanh approximation (Hendrycks & Gimpel 2016; BERT,
    GPT-2; PyTorch's ``GELU(approximate='tanh')``):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. The Array API has no ``erf``, so the
    exact form is not offered; the two differ by less than 1e-3."""

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        t = xp.tanh(_C * (x + 0.044715 * x * x * x))
        self.save_for_backward(x, t)
        return 0.5 * x * (1.0 + t)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        x, t = self.saved()
        dt = (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * dt)


class ELU(Module):
    """Exponential linear unit (Clevert et al. 2016): ``x`` for x > 0, else
    ``alpha (exp(x) - 1)``."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = validate.real_in_range("ELU", "alpha", alpha, "a positive number",
                                            low=0.0, low_open=True)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        mask = x > 0
        # exp of the clipped input: no overflow warning from the branch that is not taken
        neg = self.alpha * xp.exp(xp.minimum(x, 0.0))  # alpha * exp(x) where x <= 0
        self.save_for_backward(mask, neg)
        return xp.where(mask, x, neg - self.alpha)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        mask, neg = self.saved()
        return array_namespace(dout).where(mask, dout, dout * neg)


class Identity(Module):
    """Returns its input: a placeholder (a removed layer, a skip branch)."""

    def forward(self, x: Array) -> Array:
        return x

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        return dout


class Softmax(Module):
    """Softmax over ``axis`` (default 1, the class axis). For training use
    :class:`xpnet.losses.SoftmaxCrossEntropy`, which fuses softmax into the loss."""

    autocast = False  # float32 under xpnet.autocast (xpnet.precision)

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        e = xp.exp(x - xp.max(x, axis=self.axis, keepdims=True))
        y = e / xp.sum(e, axis=self.axis, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        xp = array_namespace(dout)
        (y,) = self.saved()
        return y * (dout - xp.sum(dout * y, axis=self.axis, keepdims=True))
