"""Pooling on NCHW arrays: MaxPool2d, AvgPool2d and GlobalAvgPool2d.

Pooling never builds the (N*OH*OW*C, k*k) matrix of the textbook: max and mean are taken
elementwise over the k*k strided slices (:func:`xpnet.ops.offset_slices`), which is much
faster than a reduction over a short innermost axis. The max helpers here also serve
:class:`xpnet.layers.ConvMaxPool2d`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from array_api_compat import array_namespace, device

from .. import ops, validate
from ..module import Module

__all__ = ["AvgPool2d", "GlobalAvgPool2d", "MaxPool2d"]

Array = Any


def check_window(owner: str, kernel: int, stride: int, padding: int) -> None:
    """Validate a square window's kernel size, stride and padding."""
    validate.positive_int(owner, "kernel_size", kernel)
    validate.positive_int(owner, "stride", stride)
    validate.non_negative_int(owner, "padding", padding)


def out_hw(layer: Module, x: Array, k: int, stride: int, pad: int) -> tuple[int, int]:
    """(OH, OW) of a k x k window over x, or a ValueError when the image is too small."""
    h, w = x.shape[2], x.shape[3]
    oh, ow = ops.out_size(h, k, stride, pad), ops.out_size(w, k, stride, pad)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"{layer!r}: input x has shape {tuple(x.shape)}; its {h}x{w} image "
                         f"(padded by {pad}) is smaller than the {k}x{k} kernel")
    return oh, ow


def max_of(xp: Any, parts: list[Array], keep_beats: bool) -> tuple[Array, list[Array] | None]:
    """Elementwise maximum of ``parts``; with ``keep_beats`` also the masks "part i beat every
    earlier part" (i >= 1), from which :func:`route_max_grad` sends the gradient to the first
    maximum, as PyTorch does, without the input or an argmax."""
    out, beats = parts[0], []
    for part in parts[1:]:
        new = xp.maximum(out, part)
        if keep_beats:
            beats.append(new != out)  # strictly larger; cheaper than re-reading the part
        out = new
    return out, beats if keep_beats else None


def route_max_grad(dout: Array, beats: list[Array]) -> Iterator[tuple[int, Array]]:
    """Yield (part index, gradient) for each part of :func:`max_of`, last part first.

    The last part that beat all earlier ones holds the (first) maximum: hand out the gradient
    from the last part backwards; part 0 keeps what no later part took.
    """
    xp = array_namespace(dout)
    remaining = dout
    for i in range(len(beats), 0, -1):
        g = remaining * xp.astype(beats[i - 1], dout.dtype)
        # in place once remaining is our own array (never on the caller's dout)
        remaining = remaining - g if remaining is dout else _isub(remaining, g)
        yield i, g
    yield 0, remaining


def _isub(a: Array, b: Array) -> Array:
    a -= b
    return a


class _Pool2d(Module):
    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        stride = kernel_size if stride is None else stride
        check_window(type(self).__name__, kernel_size, stride, padding)
        if padding > kernel_size // 2:
            raise ValueError(f"{type(self).__name__}: padding must be at most kernel_size // 2 "
                             f"= {kernel_size // 2}, got {padding}")
        self.k, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self) -> str:
        return f"k={self.k}, stride={self.stride}, padding={self.padding}"

    def _slices(self, oh: int, ow: int) -> Iterator[tuple[slice, ...]]:
        return (index for _, _, index in ops.offset_slices(self.k, self.k, self.stride, oh, ow))

    def _prepare(self, x: Array, pad_value: float) -> tuple[Any, Array, int, int]:
        xp = validate.layer_input(self, x, 4, "(N, C, H, W)")
        oh, ow = out_hw(self, x, self.k, self.stride, self.padding)
        return xp, ops.pad2d(x, self.padding, pad_value, xp=xp), oh, ow


class MaxPool2d(_Pool2d):
    """Max pooling over k x k windows (stride defaults to k; padding pads with -inf).

    The gradient goes to the first maximum of each window, as in PyTorch. Forward is an
    elementwise maximum over the k*k strided slices (no (N*OH*OW*C, k*k) matrix); in training
    it keeps, per slice, the boolean mask "this slice beat every earlier one", so backward
    needs neither the input nor an argmax.
    """

    def forward(self, x: Array) -> Array:
        xp, xpad, oh, ow = self._prepare(x, -float("inf"))
        out, beats = max_of(xp, [xpad[sl] for sl in self._slices(oh, ow)], self.training)
        self.save_for_backward(tuple(x.shape), beats)
        return out

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (n, c, h, w), beats = self.saved()
        if beats is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode")
        xp = array_namespace(dout)
        p, k, s = self.padding, self.k, self.stride
        oh, ow = dout.shape[2], dout.shape[3]
        hp, wp = h + 2 * p, w + 2 * p
        tiled = s == k and hp == oh * k and wp == ow * k  # every input in exactly one window
        alloc = xp.empty if tiled else xp.zeros
        # channel-major memory, like a convolution's output: the gradient flowing on into
        # ReLU and Conv2d backward then needs no layout-changing copy
        img = xp.permute_dims(ops.alloc(alloc, (c, n, hp, wp), dout.dtype, device(dout)),
                              (1, 0, 2, 3))
        slices = list(self._slices(oh, ow))
        for i, g in route_max_grad(dout, beats):
            if tiled:
                img[slices[i]] = g
            else:
                img[slices[i]] += g
        return img[:, :, p:p + h, p:p + w] if p else img


class AvgPool2d(_Pool2d):
    """Average pooling over k x k windows (stride defaults to k; zero padding counted in the
    average, as PyTorch's default ``count_include_pad=True``)."""

    def forward(self, x: Array) -> Array:
        xp, xpad, oh, ow = self._prepare(x, 0.0)
        self.save_for_backward(tuple(x.shape))
        total: Array = None
        for sl in self._slices(oh, ow):
            total = xpad[sl] if total is None else total + xpad[sl]
        return total * (1.0 / self.k ** 2)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (n, c, h, w), = self.saved()
        xp = array_namespace(dout)
        share = dout * (1.0 / self.k ** 2)
        oh, ow = share.shape[2], share.shape[3]
        patches = xp.broadcast_to(share[:, :, :, :, None, None], (n, c, oh, ow, self.k, self.k))
        # scatter-add the window patches back to the input's shape
        p = self.padding
        img = ops.alloc(xp.zeros, (n, c, h + 2 * p, w + 2 * p), dout.dtype, device(dout))
        ops.add_windows(img, patches, self.stride, xp=xp)
        return img[:, :, p:p + h, p:p + w] if p else img


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the average over H and W (Lin et al. 2014, "network in
    network"; ResNet's head before the classifier). Output is 2-D, ready for Linear."""

    def forward(self, x: Array) -> Array:
        xp = validate.layer_input(self, x, 4, "(N, C, H, W)")
        self.save_for_backward(tuple(x.shape))
        return xp.mean(x, axis=(2, 3))

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array:
        (shape,) = self.saved()
        xp = array_namespace(dout)
        n, c, h, w = shape
        spread = ops.alloc(xp.zeros, shape, dout.dtype, device(dout))
        return spread + xp.reshape(dout / (h * w), (n, c, 1, 1))  # a fresh, writable array
