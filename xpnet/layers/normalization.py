"""Normalisation layers: BatchNorm (batch statistics) and LayerNorm (per-example statistics)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .. import validate
from ..backend import Backend, to_device
from ..module import Module

__all__ = ["BatchNorm", "LayerNorm"]

Array = Any


class BatchNorm(Module):
    """Batch normalisation (Ioffe & Szegedy, 2015) over (N, C) or (N, C, H, W) inputs.

    Training uses batch statistics and updates running ones:
    ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention; running
    variance unbiased). Evaluation uses the running statistics. A BatchNorm called several
    times in one pass normalises each call by that call's own batch, updates the running
    statistics once per call (as in PyTorch), and sums gamma's and beta's gradients.

    In data-parallel training the batch statistics are by default each rank's own (its slice
    of the global batch), as in PyTorch's DistributedDataParallel. With ``sync=True`` the mean,
    variance and the two backward sums are reduced over the ranks of the communicator the
    Trainer trains over (``self.comm``, which the Trainer sets; before that all ranks,
    :func:`xpnet.distributed.world`; ChainerMN's multi-node BatchNorm), so N ranks with B/N
    examples each normalise exactly like one process with B: three small Allreduces per layer
    and step. In one process ``sync=True`` computes the same as ``sync=False``.
    """

    autocast = False  # statistics in float32 under xpnet.autocast (xpnet.precision)
    running_mean: Array  # buffers (add_buffer), (C,)
    running_var: Array

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5,
                 sync: bool = False, dtype: str = "float32", backend: Backend | None = None):
        super().__init__()
        self.num_features = validate.positive_int("BatchNorm", "num_features", num_features)
        momentum = validate.probability("BatchNorm", "momentum", momentum, closed=True)
        eps = validate.positive_float("BatchNorm", "eps", eps)
        sync = validate.flag("BatchNorm", "sync", sync)
        self.momentum, self.eps, self.sync = momentum, eps, sync
        self.comm: Any = None  # set by the Trainer to the communicator it trains over

        # a fresh host array each: to_device may share memory with it, and the optimizer
        # updates gamma and beta in place, which must not move the running statistics
        def fill(value: float) -> Array:
            return to_device(np.full(num_features, value), dtype=dtype, backend=backend)

        self.gamma = self.add_param("gamma", fill(1.0))
        self.beta = self.add_param("beta", fill(0.0))
        self.add_buffer("running_mean", fill(0.0))
        self.add_buffer("running_var", fill(1.0))

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}" + (", sync" if self.sync else "")

    def _axes_and_shape(self, x: Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if x.ndim == 2:
            return (0,), (1, self.num_features)
        return (0, 2, 3), (1, self.num_features, 1, 1)

    def _comm(self) -> Any:
        """The ranks a synchronised BatchNorm reduces over: the communicator a Trainer set
        (``self.comm``), else every rank (:func:`xpnet.distributed.world`)."""
        if self.comm is not None:
            return self.comm
        from ..distributed import world

        return world()

    def _means(self, xp: Any, arrays: list[Array], axes: tuple[int, ...], count: float
               ) -> list[Array]:
        """Per-channel means of each array over ``axes`` (and over all ranks with ``sync``,
        ``count`` then being the global number of values per channel): one Allreduce."""
        if not self.sync:
            return [xp.mean(a, axis=axes) for a in arrays]
        sums = self._comm().allreduce_(xp.concat([xp.sum(a, axis=axes) for a in arrays]))
        c = self.num_features
        return [sums[i * c:(i + 1) * c] / count for i in range(len(arrays))]

    def forward(self, x: Array) -> Array:
        c = self.num_features
        xp = validate.layer_input(self, x, None, "", like=self.gamma.data)
        if not (x.ndim in (2, 4) and x.shape[1] == c):
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected "
                             f"(N, {c}) or (N, {c}, H, W)")
        axes, bshape = self._axes_and_shape(x)
        count = math.prod(x.shape[a] for a in axes)
        if self.training:
            if self.sync:
                count = self._comm().allreduce_host([count])[0]
            if count < 2:
                raise ValueError(f"{self!r}: training needs more than one value per channel, "
                                 f"got input of shape {tuple(x.shape)}")
            (mean,) = self._means(xp, [x], axes, count)
            xc = x - xp.reshape(mean, bshape)
            (var,) = self._means(xp, [xc * xc], axes, count)
            m = self.momentum
            self.running_mean = (1.0 - m) * self.running_mean + m * mean
            self.running_var = (1.0 - m) * self.running_var + m * var * (count / (count - 1))
        else:
            xc = x - xp.reshape(self.running_mean, bshape)
            var = self.running_var
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = xc * xp.reshape(inv_std, bshape)
        self.save_for_backward(xhat, inv_std, axes, bshape, count, self.training)
        return xhat * xp.reshape(self.gamma.data, bshape) + xp.reshape(self.beta.data, bshape)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        xp = array_namespace(dout)
        xhat, inv_std, axes, bshape, count, training = self.saved()
        self.beta.grad = xp.sum(dout, axis=axes)
        self.gamma.grad = xp.sum(dout * xhat, axis=axes)
        dxhat = dout * xp.reshape(self.gamma.data, bshape)
        if not training:  # running statistics are constants
            return dxhat * xp.reshape(inv_std, bshape)
        mean_dxhat, mean_dxhat_xhat = self._means(xp, [dxhat, dxhat * xhat], axes, count)
        return (dxhat - xp.reshape(mean_dxhat, bshape)
                - xhat * xp.reshape(mean_dxhat_xhat, bshape)) * xp.reshape(inv_std, bshape)


class LayerNorm(Module):
    """Layer normalisation (Ba et al. 2016) over the last ``len(normalized_shape)`` axes:
    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with the biased variance of each
    example, the same in training and evaluation (no running statistics).

    ``normalized_shape`` is an int (the last axis) or a tuple; ``gamma`` (ones) and ``beta``
    (zeros) have that shape, as in PyTorch's ``LayerNorm(..., elementwise_affine=True)``.
    """

    autocast = False  # statistics in float32 under xpnet.autocast (xpnet.precision)

    def __init__(self, normalized_shape: int | tuple[int, ...], *, eps: float = 1e-5,
                 dtype: str = "float32", backend: Backend | None = None):
        super().__init__()
        shape = validate.positive_int_shape("LayerNorm", "normalized_shape", normalized_shape)
        self.eps = validate.real_in_range("LayerNorm", "eps", eps, "a positive number",
                                          low=0.0, low_open=True)
        self.normalized_shape = shape
        self.gamma = self.add_param("gamma", to_device(np.ones(shape), dtype=dtype,
                                                       backend=backend))
        self.beta = self.add_param("beta", to_device(np.zeros(shape), dtype=dtype,
                                                     backend=backend))

    def extra_repr(self) -> str:
        shape = self.normalized_shape
        return f"{shape[0] if len(shape) == 1 else shape}, eps={self.eps}"

    def forward(self, x: Array) -> Array:
        k = len(self.normalized_shape)
        xp = validate.layer_input(self, x, None, "", like=self.gamma.data)
        if x.ndim < k + 1 or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected "
                             f"(N, ..., {', '.join(map(str, self.normalized_shape))})")
        axes = tuple(range(x.ndim - k, x.ndim))
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        inv_std = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=axes, keepdims=True) + self.eps)
        xhat = xc * inv_std
        self.save_for_backward(xhat, inv_std, axes)
        return xhat * self.gamma.data + self.beta.data

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        xp = array_namespace(dout)
        xhat, inv_std, axes = self.saved()
        batch_axes = tuple(range(dout.ndim - len(axes)))
        self.gamma.grad = xp.sum(dout * xhat, axis=batch_axes)
        self.beta.grad = xp.sum(dout, axis=batch_axes)
        dxhat = dout * self.gamma.data
        n = math.prod(dout.shape[a] for a in axes)
        return inv_std / n * (n * dxhat - xp.sum(dxhat, axis=axes, keepdims=True)
                              - xhat * xp.sum(dxhat * xhat, axis=axes, keepdims=True))
