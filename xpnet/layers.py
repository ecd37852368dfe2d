"""Dense layers, activations, Dropout, BatchNorm, Flatten and the Sequential container.

Each layer caches in ``forward`` only what its ``backward`` needs, and ``backward(dout)`` returns
the gradient with respect to the input while writing parameter gradients to ``param.grad``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace as _ns
from array_api_compat import device

from . import validate
from .backend import Backend, to_device
from .init import InitSpec, init_array
from .module import Module, check_input, grad_enabled
from .rng import Generator, default_generator, spawn_generator

__all__ = ["BatchNorm", "Dropout", "Flatten", "LeakyReLU", "Linear", "ReLU", "Sequential",
           "Sigmoid", "Softmax", "Tanh"]

Array = Any


def _positive(name: str, value: int, owner: str) -> int:
    """The library's one positive-integer check (xpnet.validate: NumPy integers accepted,
    bools refused): ``value`` as an int, else "<owner>: <name> must be a positive integer"."""
    return validate.positive_int(owner, name, value)


class Linear(Module):
    """Affine layer ``y = x @ W + b`` with W of shape (in_features, out_features).

    Input (N, in_features), output (N, out_features). ``init`` is 'he' (default), 'xavier', a
    float std, or a callable (see :func:`xpnet.init.init_array`). Weights are drawn from
    ``rng``, or without it from the process-wide default Generator
    (:func:`xpnet.manual_seed`), which advances so that every layer gets its own weights.
    """

    _caches = ("_x",)  # dropped under no_grad

    def __init__(self, in_features: int, out_features: int, *, init: InitSpec = "he",
                 bias: bool = True, rng: Generator | None = None, dtype: str = "float32",
                 backend: Backend | None = None):
        super().__init__()
        self.in_features = _positive("in_features", in_features, "Linear")
        self.out_features = _positive("out_features", out_features, "Linear")
        rng = rng or default_generator()  # advances: same-shaped layers differ
        self.W = self.add_param("W", init_array(init, rng, (in_features, out_features),
                                                in_features, out_features, dtype, backend))
        self.b = self.add_param("b", init_array("zeros", rng, (out_features,), in_features,
                                                out_features, dtype, backend)) if bias else None
        self._x: Array = None

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"

    def forward(self, x: Array) -> Array:
        check_input(self, x, 2, f"(N, {self.in_features}) (use Flatten() before Linear)",
                    like=self.W.data)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected "
                             f"(N, {self.in_features})")
        self._x = x
        y = x @ self.W.data
        return y + self.b.data if self.b is not None else y

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        if self.W.trainable:  # a frozen weight needs no gradient
            self.W.grad = self._x.T @ dout
        if self.b is not None and self.b.trainable:
            self.b.grad = _ns(dout).sum(dout, axis=0)
        return dout @ self.W.data.T if input_grad else None


class ReLU(Module):
    """max(x, 0). The backward mask is kept as a float array: multiplying by it is several
    times faster than ``where`` with a scalar on NumPy."""

    _caches = ("_mask",)  # dropped under no_grad

    def forward(self, x: Array) -> Array:
        xp = _ns(x)
        self._mask = xp.astype(x > 0, x.dtype) if grad_enabled() else None
        return xp.maximum(x, 0.0)

    def backward(self, dout: Array) -> Array:
        return dout * self._mask


class LeakyReLU(Module):
    """x for x > 0, slope * x otherwise."""

    _caches = ("_mask",)  # dropped under no_grad

    def __init__(self, slope: float = 0.01):
        super().__init__()
        slope = validate.non_negative_float("LeakyReLU", "slope", slope)
        self.slope = slope

    def extra_repr(self) -> str:
        return f"slope={self.slope}"

    def forward(self, x: Array) -> Array:
        self._mask = x > 0
        return _ns(x).where(self._mask, x, self.slope * x)

    def backward(self, dout: Array) -> Array:
        return _ns(dout).where(self._mask, dout, self.slope * dout)


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    _caches = ("_y",)  # dropped under no_grad

    def forward(self, x: Array) -> Array:
        xp = _ns(x)
        e = xp.exp(-xp.abs(x))
        self._y = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return self._y

    def backward(self, dout: Array) -> Array:
        return dout * self._y * (1.0 - self._y)


class Tanh(Module):
    """tanh(x)."""

    _caches = ("_y",)  # dropped under no_grad

    def forward(self, x: Array) -> Array:
        self._y = _ns(x).tanh(x)
        return self._y

    def backward(self, dout: Array) -> Array:
        return dout * (1.0 - self._y * self._y)


class Softmax(Module):
    """Softmax over ``axis`` (default 1, the class axis). For training use
    :class:`xpnet.losses.SoftmaxCrossEntropy`, which fuses softmax into the loss."""

    _caches = ("_y",)  # dropped under no_grad

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, x: Array) -> Array:
        xp = _ns(x)
        e = xp.exp(x - xp.max(x, axis=self.axis, keepdims=True))
        self._y = e / xp.sum(e, axis=self.axis, keepdims=True)
        return self._y

    def backward(self, dout: Array) -> Array:
        xp = _ns(dout)
        y = self._y
        return y * (dout - xp.sum(dout * y, axis=self.axis, keepdims=True))


class Dropout(Module):
    """Inverted dropout: in training, zero each unit with probability p and scale the rest by
    1/(1-p), so evaluation is the identity. Masks are drawn on the device from ``rng``."""

    _caches = ("_scale",)  # dropped under no_grad

    def __init__(self, p: float = 0.5, *, rng: Generator | None = None):
        super().__init__()
        self.p = validate.probability("Dropout", "p", p)
        self.rng = rng or spawn_generator()  # its own stream: two Dropouts differ
        self._scale: Array = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Array) -> Array:
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        xp = _ns(x)
        u = self.rng.uniform(tuple(x.shape), x.dtype, xp=xp, device=device(x))
        self._scale = xp.astype(u >= self.p, x.dtype) * (1.0 / (1.0 - self.p))
        return x * self._scale

    def backward(self, dout: Array) -> Array:
        return dout if self._scale is None else dout * self._scale


class BatchNorm(Module):
    """Batch normalisation (Ioffe & Szegedy, 2015) over (N, C) or (N, C, H, W) inputs.

    Training uses batch statistics and updates running ones:
    ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention; running
    variance unbiased). Evaluation uses the running statistics.

    In data-parallel training the batch statistics are by default each rank's own (its slice
    of the global batch), as in PyTorch's DistributedDataParallel. With ``sync=True`` the mean,
    variance and the two backward sums are reduced over all ranks
    (:func:`xpnet.distributed.world`; ChainerMN's multi-node BatchNorm), so N ranks with B/N
    examples each normalise exactly like one process with B: three small Allreduces per layer
    and step. In one process ``sync=True`` computes the same as ``sync=False``.
    """

    _caches = ("_cache",)  # dropped under no_grad

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5,
                 sync: bool = False, dtype: str = "float32", backend: Backend | None = None):
        super().__init__()
        self.num_features = _positive("num_features", num_features, "BatchNorm")
        momentum = validate.probability("BatchNorm", "momentum", momentum, closed=True)
        eps = validate.positive_float("BatchNorm", "eps", eps)
        if not isinstance(sync, bool):
            raise TypeError(f"BatchNorm: sync must be True or False, got {sync!r}")
        self.momentum, self.eps, self.sync = momentum, eps, sync
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

    def _means(self, xp: Any, arrays: list[Array], axes: tuple[int, ...], count: float
               ) -> list[Array]:
        """Per-channel means of each array over ``axes`` (and over all ranks with ``sync``,
        ``count`` then being the global number of values per channel): one Allreduce."""
        if not self.sync:
            return [xp.mean(a, axis=axes) for a in arrays]
        from .distributed import world

        sums = world().allreduce_(xp.concat([xp.sum(a, axis=axes) for a in arrays]))
        c = self.num_features
        return [sums[i * c:(i + 1) * c] / count for i in range(len(arrays))]

    def forward(self, x: Array) -> Array:
        c = self.num_features
        if not (x.ndim in (2, 4) and x.shape[1] == c):
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected (N, {c}) "
                             f"or (N, {c}, H, W)")
        xp = check_input(self, x, x.ndim, "", like=self.gamma.data)
        axes, bshape = self._axes_and_shape(x)
        count = math.prod(x.shape[a] for a in axes)
        if self.training:
            if self.sync:
                from .distributed import world

                count = world().allreduce_host([count])[0]
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
        self._cache = (xhat, inv_std, axes, bshape, count)
        return xhat * xp.reshape(self.gamma.data, bshape) + xp.reshape(self.beta.data, bshape)

    def backward(self, dout: Array) -> Array:
        xp = _ns(dout)
        xhat, inv_std, axes, bshape, count = self._cache
        self.beta.grad = xp.sum(dout, axis=axes)
        self.gamma.grad = xp.sum(dout * xhat, axis=axes)
        dxhat = dout * xp.reshape(self.gamma.data, bshape)
        if not self.training:  # running statistics are constants
            return dxhat * xp.reshape(inv_std, bshape)
        mean_dxhat, mean_dxhat_xhat = self._means(xp, [dxhat, dxhat * xhat], axes, count)
        return (dxhat - xp.reshape(mean_dxhat, bshape)
                - xhat * xp.reshape(mean_dxhat_xhat, bshape)) * xp.reshape(inv_std, bshape)


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def forward(self, x: Array) -> Array:
        if x.ndim < 2:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected (N, ...)")
        self._shape = tuple(x.shape)
        return _ns(x).reshape(x, (x.shape[0], -1))

    def backward(self, dout: Array) -> Array:
        return _ns(dout).reshape(dout, self._shape)


class Sequential(Module):
    """Layers applied in order; parameters are named '<index>.<name>' ('0.W', '2.gamma')."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
            for j in range(i):
                if layers[j] is layer:
                    raise ValueError(f"Sequential: items {j} and {i} are the same {layer!r}; "
                                     "a module can be used once in a model (its cache holds "
                                     "one input): build a second layer instead")
        object.__setattr__(self, "layers", list(layers))

    def children(self):
        return ((str(i), layer) for i, layer in enumerate(self.layers))

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    def forward(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """Backpropagate ``dout``; with ``input_grad=False`` backpropagation stops at the
        first layer with a trainable parameter, which is told that its input gradient is not
        needed (Linear and Conv2d then skip computing it): a frozen prefix
        (:meth:`Module.freeze`) costs no backward work."""
        layers = self.layers
        first = 0
        if not input_grad:
            first = next((i for i, m in enumerate(layers) if m.has_trainable()), len(layers))
            if first == len(layers):
                return None
        for i in range(len(layers) - 1, first, -1):
            dout = layers[i].backward(dout)
        if not layers:
            return dout if input_grad else None
        dx = layers[first].backward(dout, input_grad=input_grad)
        return dx if input_grad else None
