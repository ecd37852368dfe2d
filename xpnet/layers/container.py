"""Sequential, the container that chains layers, and Flatten, the reshape between a
convolutional trunk and a dense head."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from array_api_compat import array_namespace

from .. import validate
from ..module import Module
from .activation import ReLU
from .conv import Conv2d
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

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (shape,) = self.saved()
        return array_namespace(dout).reshape(dout, shape)


class Sequential(Module):
    """Layers applied in order; parameters are named '<index>.<name>' ('0.W', '2.gamma').

    One layer object may appear more than once (``Sequential(lin, act, lin)``: shared weights);
    its parameters are then named after its first place and their gradients summed.

    A ReLU directly followed by a MaxPool2d runs after the pool (see :meth:`run_order`): max
    pooling commutes with ReLU, so the output and every gradient are the same, while the ReLU
    and its backward mask touch the k*k times smaller pooled output.

    A Conv2d that then runs directly before a ReLU takes it as an epilogue
    (``conv.forward(x, relu=True)``, see :meth:`run_plan`): the ReLU module is not called, and
    the convolution's backward applies its mask. Same outputs and gradients, fewer passes over
    the activations.
    """

    layers: list[Module]

    #: reorder commuting layers and fuse epilogues for speed (:meth:`run_order`,
    #: :meth:`run_plan`); False runs every layer as listed, on its own
    fuse = True

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
        object.__setattr__(self, "layers", list(layers))

    def children(self) -> Iterator[tuple[str, Module]]:
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

    def run_plan(self) -> list[tuple[int, ...]]:
        """The steps forward runs: :meth:`run_order` with each Conv2d directly followed by a
        ReLU (exact classes, with :attr:`fuse`) as one step ``(conv, relu)``, run as
        ``conv.forward(x, relu=True)``; every other layer is a step of its own. A layer whose
        ``forward`` was replaced on the instance (a spy, as :meth:`Module.summary` uses, or a
        user's wrapper) is never fused: the ReLU's own forward would not run."""
        order, plan = self.run_order(), []  # type: tuple[list[int], list[tuple[int, ...]]]
        i = 0
        while i < len(order):
            pair = order[i:i + 2]
            if self.fuse and len(pair) == 2 and type(self.layers[pair[0]]) is Conv2d \
                    and type(self.layers[pair[1]]) is ReLU \
                    and not any("forward" in vars(self.layers[j]) for j in pair):
                plan.append((pair[0], pair[1]))
                i += 2
            else:
                plan.append((order[i],))
                i += 1
        return plan

    def forward(self, x: Array) -> Array:
        plan = self.run_plan()
        self.save_for_backward(plan)  # this call's plan, for its backward
        for step in plan:
            layer = self.layers[step[0]]
            if len(step) == 2:
                assert isinstance(layer, Conv2d)  # run_plan fuses only a Conv2d
                x = layer.forward(x, relu=True)
            else:
                x = layer.forward(x)
        return x

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """Backpropagate ``dout``; with ``input_grad=False`` backpropagation stops at the
        first layer with a trainable parameter, which is told that its input gradient is not
        needed (Linear and Conv2d then skip computing it): a frozen prefix
        (:meth:`Module.freeze`) costs no backward work."""
        layers = self.layers
        (plan,) = self.saved()
        first = 0  # the position in ``plan`` where backpropagation stops
        if not input_grad:  # (a fused step's first layer is its Conv2d: trainable or not)
            first = next((pos for pos, step in enumerate(plan)
                          if any(layers[i].has_trainable() for i in step)), len(plan))
            if first == len(plan):
                return None
        for pos in range(len(plan) - 1, first, -1):
            dout = layers[plan[pos][0]].backward(dout)
        if not plan:
            return dout if input_grad else None
        dx = layers[plan[first][0]].backward(dout, input_grad=input_grad)
        return dx if input_grad else None
