"""Linear: the affine layer ``y = x @ W + b``."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import validate
from ..backend import Backend
from ..init import InitSpec, init_array
from ..module import Module
from ..rng import Generator, check_generator, default_generator

__all__ = ["Linear"]

Array = Any


class Linear(Module):
    """Affine layer ``y = x @ W + b`` with W of shape (in_features, out_features).

    Input (N, in_features), output (N, out_features). ``init`` is 'he' (default), 'xavier', a
    float std, or a callable (see :func:`xpnet.init.init_array`). Weights are drawn from
    ``rng``, or without it from the process-wide default Generator
    (:func:`xpnet.manual_seed`), which advances so that every layer gets its own weights.
    """

    autocast = True  # runs in the low dtype under xpnet.autocast (xpnet.precision)

    def __init__(self, in_features: int, out_features: int, *, init: InitSpec = "he",
                 bias: bool = True, rng: Generator | None = None, dtype: str = "float32",
                 backend: Backend | None = None):
        super().__init__()
        self.in_features = validate.positive_int("Linear", "in_features", in_features)
        self.out_features = validate.positive_int("Linear", "out_features", out_features)
        rng = check_generator(type(self).__name__, rng) or default_generator()  # advances
        self.W = self.add_param("W", init_array(init, rng, (in_features, out_features),
                                                in_features, out_features, dtype, backend))
        self.b = self.add_param("b", init_array("zeros", rng, (out_features,), in_features,
                                                out_features, dtype, backend)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"

    def forward(self, x: Array) -> Array:
        expect = f"(N, {self.in_features})"
        validate.layer_input(self, x, 2, f"{expect} (use Flatten() before Linear)",
                             like=self.W.data)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected {expect}")
        self.save_for_backward(x)
        y = x @ self.W.data
        if self.b is not None:
            y += self.b.data  # in place: the product is a fresh array, no second allocation
        return y

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        (x,) = self.saved()
        if self.W.trainable:  # a frozen weight needs no gradient
            self.W.grad = x.T @ dout
        if self.b is not None and self.b.trainable:
            self.b.grad = array_namespace(dout).sum(dout, axis=0)
        return dout @ self.W.data.T if input_grad else None
