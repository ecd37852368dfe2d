"""Convolution and pooling on NCHW arrays, built on the window hooks of :mod:`xpnet.ops`.

Conv2d is im2col + one large matmul; its backward is two matmuls + col2im (a scatter-add of
slices over the kernel offsets). Pooling never builds the (N*OH*OW*C, k*k) matrix of the
textbook: max and mean are taken elementwise over the k*k strided slices, which is much faster
than a reduction over a short innermost axis.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

from . import ops
from .backend import Backend
from .init import InitSpec, init_array
from .layers import _positive
from .module import Module, check_input
from .rng import Generator

__all__ = ["AvgPool2d", "Conv2d", "MaxPool2d"]

Array = Any


def _pair_check(owner: str, kernel: int, stride: int, padding: int) -> None:
    _positive("kernel_size", kernel, owner)
    _positive("stride", stride, owner)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"{owner}: padding must be a non-negative integer, got {padding!r}")


def _out_hw(layer: Module, x: Array, k: int, stride: int, pad: int) -> tuple[int, int]:
    h, w = x.shape[2], x.shape[3]
    oh, ow = ops.out_size(h, k, stride, pad), ops.out_size(w, k, stride, pad)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"{layer!r}: input x has shape {tuple(x.shape)}; its {h}x{w} image "
                         f"(padded by {pad}) is smaller than the {k}x{k} kernel")
    return oh, ow


class Conv2d(Module):
    """2-D convolution (cross-correlation) with square kernels.

    W has shape (out_channels, in_channels, k, k), b (out_channels,). Input (N, C, H, W),
    output (N, out_channels, OH, OW) with OH = (H + 2*padding - k) // stride + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, init: InitSpec = "he",
                 rng: Generator | None = None, dtype: str = "float32",
                 backend: Backend | None = None):
        super().__init__()
        _positive("in_channels", in_channels, "Conv2d")
        _positive("out_channels", out_channels, "Conv2d")
        _pair_check("Conv2d", kernel_size, stride, padding)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.k, self.stride, self.padding = kernel_size, stride, padding
        rng = rng or Generator(0)
        fan_in, fan_out = in_channels * kernel_size ** 2, out_channels * kernel_size ** 2
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.W = self.add_param("W", init_array(init, rng, shape, fan_in, fan_out, dtype,
                                                backend))
        self.b = self.add_param("b", init_array("zeros", rng, (out_channels,), fan_in,
                                                fan_out, dtype, backend))

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, k={self.k}, stride={self.stride}, "
                f"padding={self.padding}")

    def forward(self, x: Array) -> Array:
        xp = check_input(self, x, 4, f"(N, {self.in_channels}, H, W)", like=self.W.data)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected "
                             f"(N, {self.in_channels}, H, W)")
        n = x.shape[0]
        oh, ow = _out_hw(self, x, self.k, self.stride, self.padding)
        self._x_shape = tuple(x.shape)
        # a ones row in cols and the bias as W's last column: the bias add rides in the matmul
        self._cols = ops.im2col(x, self.k, self.k, self.stride, self.padding, ones_row=True,
                                xp=xp)
        w_aug = xp.concat([self._w_matrix(xp), xp.reshape(self.b.data, (-1, 1))], axis=1)
        out = w_aug @ self._cols  # (F, N*OH*OW)
        return xp.permute_dims(xp.reshape(out, (self.out_channels, n, oh, ow)), (1, 0, 2, 3))

    def _w_matrix(self, xp: Any) -> Array:
        """W as (F, kh*kw*C), matching the row order of :func:`xpnet.ops.im2col`."""
        return xp.reshape(xp.permute_dims(self.W.data, (0, 2, 3, 1)), (self.out_channels, -1))

    def param_backward(self, dout: Array) -> Array:
        """Fill W.grad and b.grad; return dout as a (F, N*OH*OW) matrix."""
        xp = array_namespace(dout)
        d = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (self.out_channels, -1))
        f, c, k = self.out_channels, self.in_channels, self.k
        dw_aug = d @ self._cols.T  # (F, kh*kw*C + 1): the last column is the bias gradient
        self.W.grad = xp.permute_dims(xp.reshape(dw_aug[:, :-1], (f, k, k, c)), (0, 3, 1, 2))
        self.b.grad = dw_aug[:, -1]
        return d

    def backward(self, dout: Array) -> Array:
        xp = array_namespace(dout)
        d = self.param_backward(dout)
        dcols = self._w_matrix(xp).T @ d
        return ops.col2im(dcols, self._x_shape, self.k, self.k, self.stride, self.padding, xp=xp)


class _Pool2d(Module):
    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        stride = kernel_size if stride is None else stride
        _pair_check(type(self).__name__, kernel_size, stride, padding)
        if padding > kernel_size // 2:
            raise ValueError(f"{type(self).__name__}: padding must be at most kernel_size // 2 "
                             f"= {kernel_size // 2}, got {padding}")
        self.k, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self) -> str:
        return f"k={self.k}, stride={self.stride}, padding={self.padding}"

    def _slices(self, oh: int, ow: int):
        return (index for _, _, index in ops.offset_slices(self.k, self.k, self.stride, oh, ow))

    def _prepare(self, x: Array, pad_value: float) -> tuple[Any, Array, int, int]:
        xp = check_input(self, x, 4, "(N, C, H, W)")
        oh, ow = _out_hw(self, x, self.k, self.stride, self.padding)
        self._x_shape = tuple(x.shape)
        return xp, ops.pad2d(x, self.padding, pad_value, xp=xp), oh, ow

    def _fold(self, xp: Any, patches: Array) -> Array:
        """Scatter-add window patches (N, C, OH, OW, k, k) back to the input's shape."""
        n, c, h, w = self._x_shape
        p = self.padding
        img = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=patches.dtype,
                       device=device(patches))
        ops.add_windows(img, patches, self.stride, xp=xp)
        return img[:, :, p:p + h, p:p + w] if p else img


class MaxPool2d(_Pool2d):
    """Max pooling over k x k windows (stride defaults to k; padding pads with -inf).

    The gradient goes to the first maximum of each window, as in PyTorch. Forward is an
    elementwise maximum over the k*k strided slices (no (N*OH*OW*C, k*k) matrix); in training
    it keeps, per slice, the boolean mask "this slice beat every earlier one", so backward
    needs neither the input nor an argmax.
    """

    def forward(self, x: Array) -> Array:
        xp, xpad, oh, ow = self._prepare(x, -float("inf"))
        out, beats = None, []
        for sl in self._slices(oh, ow):
            if out is None:
                out = xpad[sl]
                continue
            new = xp.maximum(out, xpad[sl])
            if self.training:
                beats.append(new != out)  # strictly larger; cheaper than re-reading the slice
            out = new
        self._beats = beats if self.training else None
        return out

    def backward(self, dout: Array) -> Array:
        if self._beats is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode")
        xp = array_namespace(dout)
        n, c, h, w = self._x_shape
        p, k, s = self.padding, self.k, self.stride
        oh, ow = dout.shape[2], dout.shape[3]
        hp, wp = h + 2 * p, w + 2 * p
        tiled = s == k and hp == oh * k and wp == ow * k  # every input in exactly one window
        alloc = xp.empty if tiled else xp.zeros
        # channel-major memory, like a convolution's output: the gradient flowing on into
        # ReLU and Conv2d backward then needs no layout-changing copy
        img = xp.permute_dims(alloc((c, n, hp, wp), dtype=dout.dtype, device=device(dout)),
                              (1, 0, 2, 3))
        slices = list(self._slices(oh, ow))
        # The last slice that beat all earlier ones holds the (first) maximum: hand out the
        # gradient from the last slice backwards; slice 0 keeps what no later slice took.
        remaining = dout
        for sl, beat in zip(reversed(slices[1:]), reversed(self._beats)):
            g = remaining * xp.astype(beat, dout.dtype)
            remaining = remaining - g
            if tiled:
                img[sl] = g
            else:
                img[sl] += g
        if tiled:
            img[slices[0]] = remaining
        else:
            img[slices[0]] += remaining
        return img[:, :, p:p + h, p:p + w] if p else img


class AvgPool2d(_Pool2d):
    """Average pooling over k x k windows (stride defaults to k; zero padding counted in the
    average, as PyTorch's default ``count_include_pad=True``)."""

    def forward(self, x: Array) -> Array:
        xp, xpad, oh, ow = self._prepare(x, 0.0)
        total = None
        for sl in self._slices(oh, ow):
            total = xpad[sl] if total is None else total + xpad[sl]
        return total * (1.0 / self.k ** 2)

    def backward(self, dout: Array) -> Array:
        xp = array_namespace(dout)
        share = dout * (1.0 / self.k ** 2)
        n, c, oh, ow = share.shape
        patches = xp.broadcast_to(share[:, :, :, :, None, None], (n, c, oh, ow, self.k, self.k))
        return self._fold(xp, patches)
