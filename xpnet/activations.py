"""More activations: GELU (tanh approximation), ELU and Identity.

Like the activations in layers.py, each caches in ``forward`` only what ``backward`` needs.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from .module import Module

__all__ = ["ELU", "GELU", "Identity"]

Array = Any

_C = math.sqrt(2.0 / math.pi)


class GELU(Module):
    """Gaussian error linear unit, in the tanh approximation (Hendrycks & Gimpel 2016; BERT,
    GPT-2; PyTorch's ``GELU(approximate='tanh')``):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. The Array API has no ``erf``, so the
    exact form is not offered; the two differ by less than 1e-3."""

    _caches = ("_x", "_t")  # dropped under no_grad

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        t = xp.tanh(_C * (x + 0.044715 * x * x * x))
        self._x, self._t = x, t
        return 0.5 * x * (1.0 + t)

    def backward(self, dout: Array) -> Array:
        x, t = self._x, self._t
        dt = (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * dt)


class ELU(Module):
    """Exponential linear unit (Clevert et al. 2016): ``x`` for x > 0, else
    ``alpha (exp(x) - 1)``."""

    _caches = ("_mask", "_neg")  # dropped under no_grad

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"ELU: alpha must be a positive number, got {alpha!r}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, x: Array) -> Array:
        xp = array_namespace(x)
        self._mask = x > 0
        # exp of the clipped input: no overflow warning from the branch that is not taken
        self._neg = self.alpha * xp.exp(xp.minimum(x, 0.0))  # alpha * exp(x) where x <= 0
        return xp.where(self._mask, x, self._neg - self.alpha)

    def backward(self, dout: Array) -> Array:
        return array_namespace(dout).where(self._mask, dout, dout * self._neg)


class Identity(Module):
    """Returns its input: a placeholder (a removed layer, a skip branch)."""

    def forward(self, x: Array) -> Array:
        return x

    def backward(self, dout: Array) -> Array:
        return dout
