"""Sequential, the container that chains layers, and Flatten, the reshape between a
convolutional trunk and a dense head."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import validate
from ..module import Module
from .activation import ReLU
from .pooling import MaxPool2d

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

    A ReLU directly followed by a MaxPool2d runs after the pool (see :meth:`run_order`): max
    pooling commutes with ReLU, so the output and every gradient are the same, while the ReLU
    and its backward mask touch the k*k times smaller pooled output.
    """

    #: reorder commuting layers for speed (:meth:`run_order`); False runs them as listed
    fuse = True

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

    def run_order(self) -> list[int]:
        """The order forward runs the layers in: as listed, except that a ReLU directly
        followed by a MaxPool2d swaps with it (with :attr:`fuse`).

        max over a window of relu(x) is relu of the max of x (ReLU does not decrease), and the
        gradients agree too: a positive maximum is the same first maximum either way, and a
        window whose maximum is <= 0 gets no gradient either way (ReLU's mask is x > 0).
        Only the exact classes swap (a subclass may change what commutes)."""
        order = list(range(len(self.layers)))
        if not self.fuse:
            return order
        i = 0
        while i < len(order) - 1:
            if type(self.layers[i]) is ReLU and type(self.layers[i + 1]) is MaxPool2d:
                order[i], order[i + 1] = i + 1, i
                i += 2
            else:
                i += 1
        return order

    def forward(self, x: Array) -> Array:
        order = self.run_order()
        self.save_for_backward(order)  # this call's order, for its backward
        for i in order:
            x = self.layers[i].forward(x)
        return x

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """Backpropagate ``dout``; with ``input_grad=False`` backpropagation stops at the
        first layer with a trainable parameter, which is told that its input gradient is not
        needed (Linear and Conv2d then skip computing it): a frozen prefix
        (:meth:`Module.freeze`) costs no backward work."""
        layers = self.layers
        (order,) = self.saved()
        first = 0  # the position in ``order`` where backpropagation stops
        if not input_grad:
            first = next((pos for pos, i in enumerate(order) if layers[i].has_trainable()),
                         len(order))
            if first == len(order):
                return None
        for pos in range(len(order) - 1, first, -1):
            dout = layers[order[pos]].backward(dout)
        if not order:
            return dout if input_grad else None
        dx = layers[order[first]].backward(dout, input_grad=input_grad)
        return dx if input_grad else None
