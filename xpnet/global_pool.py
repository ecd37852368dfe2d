"""GlobalAvgPool2d: the mean over each channel's spatial positions, (N, C, H, W) -> (N, C)."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

from . import ops
from .module import Module, check_input

__all__ = ["GlobalAvgPool2d"]

Array = Any


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the average over H and W (Lin et al. 2014, "network in
    network"; ResNet's head before the classifier). Output is 2-D, ready for Linear."""

    def forward(self, x: Array) -> Array:
        xp = check_input(self, x, 4, "(N, C, H, W)")
        self._shape = tuple(x.shape)
        return xp.mean(x, axis=(2, 3))

    def backward(self, dout: Array) -> Array:
        xp = array_namespace(dout)
        n, c, h, w = self._shape
        spread = ops.alloc(xp.zeros, self._shape, dout.dtype, device(dout))
        return spread + xp.reshape(dout / (h * w), (n, c, 1, 1))  # a fresh, writable array
