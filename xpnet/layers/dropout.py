"""Dropout: inverted dropout with masks drawn on the device."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

from .. import validate
from ..module import Module
from ..rng import Generator, check_generator, spawn_generator

__all__ = ["Dropout"]

Array = Any


class Dropout(Module):
    """Inverted dropout: in training, zero each unit with probability p and scale the rest by
    1/(1-p), so evaluation is the identity. Masks are drawn on the device from ``rng``; each
    call draws its own."""

    def __init__(self, p: float = 0.5, *, rng: Generator | None = None):
        super().__init__()
        self.p = validate.probability("Dropout", "p", p)
        self.rng = check_generator("Dropout", rng) or spawn_generator()  # its own stream

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Array) -> Array:
        if not self.training or self.p == 0.0:
            self.save_for_backward(None)
            return x
        xp = array_namespace(x)
        u = self.rng.uniform(tuple(x.shape), x.dtype, xp=xp, device=device(x))
        scale = xp.astype(u >= self.p, x.dtype) * (1.0 / (1.0 - self.p))
        self.save_for_backward(scale)
        return x * scale

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (scale,) = self.saved()
        return dout if scale is None else dout * scale
