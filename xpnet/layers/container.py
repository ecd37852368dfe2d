"""Sequential, the container that chains layers, and Flatten, the reshape between a
convolutional trunk and a dense head."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import validate
from ..module import Module

__all__ = ["Flatten", "Sequential"]

Array = Any


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def forward(self, x: Array) -> Array:
        xp = validate.layer_input(self, x, None, "(N, ...)")
        if x.ndim < 2:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected (N, ...)")
        self.save_for_backward(tuple(x.shape))
        return xp.reshape(x, (x.shape[0], -1))

    def backward(self, dout: Array) -> Array:
        (shape,) = self.saved()
        return array_namespace(dout).reshape(dout, shape)


class Sequential(Module):
    """Layers applied in order; parameters are named '<index>.<name>' ('0.W', '2.gamma').

    One layer object may appear more than once (``Sequential(lin, act, lin)``: shared weights);
    its parameters are then named after its first place and their gradients summed.
    """

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
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
