"""LayerNorm: normalisation over the feature axes of each example."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .backend import Backend, check_same_device, to_device
from .module import Module

__all__ = ["LayerNorm"]

Array = Any


class LayerNorm(Module):
    """Layer normalisation (Ba et al. 2016) over the last ``len(normalized_shape)`` axes:
    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with the biased variance of each
    example, the same in training and evaluation (no running statistics).

    ``normalized_shape`` is an int (the last axis) or a tuple; ``gamma`` (ones) and ``beta``
    (zeros) have that shape, as in PyTorch's ``LayerNorm(..., elementwise_affine=True)``.
    """

    _caches = ("_cache",)  # dropped under no_grad

    def __init__(self, normalized_shape: int | tuple[int, ...], *, eps: float = 1e-5,
                 dtype: str = "float32", backend: Backend | None = None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) \
            else tuple(normalized_shape)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                for d in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be a positive integer or a "
                             f"tuple of them, got {normalized_shape!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"LayerNorm: eps must be a positive number, got {eps!r}")
        self.normalized_shape, self.eps = shape, float(eps)
        self.gamma = self.add_param("gamma", to_device(np.ones(shape), dtype=dtype,
                                                       backend=backend))
        self.beta = self.add_param("beta", to_device(np.zeros(shape), dtype=dtype,
                                                     backend=backend))

    def extra_repr(self) -> str:
        shape = self.normalized_shape
        return f"{shape[0] if len(shape) == 1 else shape}, eps={self.eps}"

    def forward(self, x: Array) -> Array:
        k = len(self.normalized_shape)
        if x.ndim < k + 1 or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected "
                             f"(N, ..., {', '.join(map(str, self.normalized_shape))})")
        xp = array_namespace(x)
        if not xp.isdtype(x.dtype, "real floating") or x.dtype != self.gamma.data.dtype:
            raise TypeError(f"{self!r}: input x has dtype {x.dtype}; expected "
                            f"{self.gamma.data.dtype}, the parameters' dtype")
        check_same_device(x, self.gamma.data, "input x", f"{self!r} parameters")
        axes = tuple(range(x.ndim - k, x.ndim))
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        inv_std = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=axes, keepdims=True) + self.eps)
        xhat = xc * inv_std
        self._cache = (xhat, inv_std, axes)
        return xhat * self.gamma.data + self.beta.data

    def backward(self, dout: Array) -> Array:
        xp = array_namespace(dout)
        xhat, inv_std, axes = self._cache
        batch_axes = tuple(range(dout.ndim - len(axes)))
        self.gamma.grad = xp.sum(dout * xhat, axis=batch_axes)
        self.beta.grad = xp.sum(dout, axis=batch_axes)
        dxhat = dout * self.gamma.data
        n = math.prod(dout.shape[a] for a in axes)
        return inv_std / n * (n * dxhat - xp.sum(dxhat, axis=axes, keepdims=True)
                              - xhat * xp.sum(dxhat * xhat, axis=axes, keepdims=True))
