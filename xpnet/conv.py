"""Convolution and pooling on NCHW arrays, built on the window hooks of :mod:`xpnet.ops`.

On a backend with a convolution of its own (torch: :func:`xpnet.ops.native_conv2d`) Conv2d
and ConvMaxPool2d run it. Elsewhere (NumPy, CuPy, any standard library) Conv2d has two
formulations of its own, which are also the fallback the native path is tested against.
Stride 1 with padding <= k - 1 (nearly every conv net's 3x3 and 5x5 layers) runs on a
*grid*: the padded input stored channel-major and flat, one (H + p) x (W + p) block per image
with the padding shared between neighbours, so kernel offset (i, j) is the same flat array
shifted by i*(W + p) + j. Its column matrix is k*k contiguous copies, made and multiplied one
cache-sized block at a time and never kept
(:func:`xpnet.ops.grid_matmul`); the weight gradient rebuilds the blocks; the input gradient is
a convolution of the output gradient, padded by k - 1 - p on the same grid, with the flipped
kernel (one well-shaped matmul instead of a skinny one plus a col2im scatter-add). Other
convolutions (stride > 1, wider padding) and :class:`ConvMaxPool2d` use im2col + one large
matmul, and col2im (a scatter-add of slices over the kernel offsets) for stride > 1. Pooling
never builds the (N*OH*OW*C, k*k) matrix of the textbook: max and mean are taken elementwise
over the k*k strided slices, which is much faster than a reduction over a short innermost axis.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

from . import ops
from .backend import Backend
from .init import InitSpec, init_array
from .layers import _positive
from .module import Module, check_input
from .rng import Generator, default_generator
from .threads import Workspace

__all__ = ["AvgPool2d", "Conv2d", "ConvMaxPool2d", "MaxPool2d"]

Array = Any


def _pair_check(owner: str, kernel: int, stride: int, padding: int) -> None:
    from .validate import non_negative_int, positive_int  # the shared validators
    positive_int(owner, "kernel_size", kernel)
    positive_int(owner, "stride", stride)
    non_negative_int(owner, "padding", padding)


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

    _caches = ("_cols",)  # dropped under no_grad

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
        rng = rng or default_generator()  # advances: same-shaped layers differ
        fan_in, fan_out = in_channels * kernel_size ** 2, out_channels * kernel_size ** 2
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.W = self.add_param("W", init_array(init, rng, shape, fan_in, fan_out, dtype,
                                                backend))
        self.b = self.add_param("b", init_array("zeros", rng, (out_channels,), fan_in,
                                                fan_out, dtype, backend))

    #: "auto" (the backend's own convolution where it has one, :func:`xpnet.ops.native_conv2d`:
    #: torch; else the grid formulation where it applies: stride 1 and padding <= k - 1; else
    #: im2col), "native" (the same as "auto"), "grid" (the grid; it falls back to im2col where
    #: it does not apply) or "im2col" (im2col + one matmul; the input gradient by col2im, or for
    #: stride 1 as a convolution of the output gradient on the grid)
    path = "auto"

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, k={self.k}, stride={self.stride}, "
                f"padding={self.padding}")

    def _check(self, x: Array) -> Any:
        xp = check_input(self, x, 4, f"(N, {self.in_channels}, H, W)", like=self.W.data)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected "
                             f"(N, {self.in_channels}, H, W)")
        return xp

    def _use_grid(self) -> bool:
        if self.path not in ("auto", "native", "grid", "im2col"):
            raise ValueError(f"{self!r}: path must be 'auto', 'native', 'grid' or 'im2col', "
                             f"got {self.path!r}")
        return self.path != "im2col" and self.stride == 1 and self.padding <= self.k - 1

    def _native(self, xp: Any) -> ops.NativeConv2d | None:
        return ops.native_conv2d(xp) if self.path in ("auto", "native") else None

    def _forward_native(self, native: ops.NativeConv2d, x: Array, oh: int, ow: int) -> Array:
        """The backend's convolution; backward needs x itself, kept by reference (an input
        overwritten in place before backward, as by no xpnet code, would change the weight
        gradient)."""
        self._mode, self._x_shape, self._conv_impl = "native", tuple(x.shape), native
        self._out_shape = (x.shape[0], self.out_channels, oh, ow)
        self._cols = x if self.training else None
        return native.forward(x, self.W.data, self.b.data, self.stride, self.padding)

    def forward(self, x: Array) -> Array:
        xp = self._check(x)
        oh, ow = _out_hw(self, x, self.k, self.stride, self.padding)
        use_grid = self._use_grid()  # (checks the path first)
        native = self._native(xp)
        if native is not None:
            return self._forward_native(native, x, oh, ow)
        if use_grid:
            return self._forward_grid(xp, x, oh, ow)
        xp, out = self._conv_matrix(x, pool=1)
        n, _, oh, ow = self._out_shape
        return xp.permute_dims(xp.reshape(out, (self.out_channels, n, oh, ow)), (1, 0, 2, 3))

    def _workspace(self) -> Workspace:
        ws = self.__dict__.get("_ws")
        if ws is None:
            ws = self._ws = Workspace()
        return ws

    def _w_aug(self, xp: Any) -> Array:
        """[W as (F, kh*kw*C) | b]: the bias rides in the matmul against a ones row."""
        return xp.concat([self._w_matrix(xp), xp.reshape(self.b.data, (-1, 1))], axis=1)

    def _forward_grid(self, xp: Any, x: Array, oh: int, ow: int) -> Array:
        """Stride 1 over a shared-padding grid (see :func:`_grid_geometry`): the column
        matrix is k*k contiguous copies, made (on NumPy) one cache-sized block at a time and
        never kept (:func:`xpnet.ops.grid_matmul`)."""
        n, _, h, w = x.shape
        k, p, f = self.k, self.padding, self.out_channels
        hg, wg, tail = _grid_geometry(h, w, k, p)
        # the padded input is all backward needs: the columns are rebuilt there, block by block
        # (evaluation keeps nothing: a fresh grid, freed after the forward)
        ws = self._workspace()
        self._cols = ops.to_grid(x, (hg, wg), (p, p), tail, ws=ws if self.training else None,
                                 key="x", xp=xp)
        self._mode, self._pool, self._grid = "grid", 1, (hg, wg)
        self._x_shape, self._out_shape = tuple(x.shape), (n, f, oh, ow)
        out = ops.grid_matmul(self._w_aug(xp), self._cols, k, wg, n * hg * wg, ones_row=True,
                              xp=xp)
        if not self.training:
            self._cols = None
        out = xp.reshape(out, (f, n, hg, wg))
        return xp.permute_dims(out[:, :, :oh, :ow], (1, 0, 2, 3))

    def _conv_matrix(self, x: Array, pool: int) -> tuple[Any, Array]:
        """Check x, keep its im2col matrix, return (xp, W @ cols): the (F, N*OH*OW) output
        (columns in im2col's ``pool`` order)."""
        xp = self._check(x)
        oh, ow = _out_hw(self, x, self.k, self.stride, self.padding)
        self._x_shape, self._out_shape = tuple(x.shape), (x.shape[0], self.out_channels, oh, ow)
        self._mode, self._pool = "im2col", pool
        # a ones row in cols and the bias as W's last column: the bias add rides in the matmul
        self._cols = ops.im2col(x, self.k, self.k, self.stride, self.padding, ones_row=True,
                                pool=pool, xp=xp)
        return xp, self._w_aug(xp) @ self._cols

    def _w_matrix(self, xp: Any) -> Array:
        """W as (F, kh*kw*C), matching the row order of :func:`xpnet.ops.im2col`."""
        return xp.reshape(xp.permute_dims(self.W.data, (0, 2, 3, 1)), (self.out_channels, -1))

    def _output_grad_matrix(self, dout: Array) -> Array:
        """dout (N, F, OH, OW) as the (F, N*OH*OW) matrix matching the forward's columns."""
        xp = array_namespace(dout)
        return xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (self.out_channels, -1))

    def _set_grads(self, xp: Any, dw_aug: Array) -> None:
        f, c, k = self.out_channels, self.in_channels, self.k
        # (F, kh*kw*C + 1): the last column is the bias gradient
        self.W.grad = xp.permute_dims(xp.reshape(dw_aug[:, :-1], (f, k, k, c)), (0, 3, 1, 2))
        self.b.grad = dw_aug[:, -1]

    def param_backward(self, dout: Array) -> None:
        """Fill W.grad and b.grad only (an alias of ``backward(dout, input_grad=False)``)."""
        self.backward(dout, input_grad=False)

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """Fill W.grad and b.grad; return the input gradient, or None with
        ``input_grad=False`` (a first layer: the input gradient is then never computed)."""
        if getattr(self, "_cols", None) is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode "
                               "first")
        xp = array_namespace(dout)
        if self._mode == "native":
            dx, dw, db = self._conv_impl.backward(dout, self._cols, self.W.data, self.stride,
                                                  self.padding, input_grad)
            self.W.grad, self.b.grad = dw, db
            return dx if input_grad else None
        if self._mode == "grid":
            return self._backward_grid(xp, dout, input_grad)
        d = self._output_grad_matrix(dout)
        self._set_grads(xp, d @ self._cols.T)
        if not input_grad:
            return None
        if self.stride == 1 and self._pool == 1 and self.padding <= self.k - 1:
            return self._input_grad_conv(xp, dout, None)  # a convolution, on the grid
        dcols = self._w_matrix(xp).T @ d
        return ops.col2im(dcols, self._x_shape, self.k, self.k, self.stride, self.padding,
                          pool=self._pool, xp=xp)

    def _backward_grid(self, xp: Any, dout: Array, input_grad: bool) -> Array | None:
        n = dout.shape[0]
        hg, wg = self._grid
        k = self.k
        q = k - 1 - self.padding
        # dout padded by q on the forward's grid (the input gradient's convolution reads it);
        # the same array shifted by q rows and q columns is dout at the grid's corner, zeros
        # elsewhere: the output gradient matching the forward's columns (weight gradient)
        dflat = self._dout_grid(xp, dout)
        shift = q * wg + q
        dgrid = dflat[:, shift:shift + n * hg * wg]
        self._set_grads(xp, ops.grid_matmul(dgrid, self._cols, k, wg, n * hg * wg,
                                            ones_row=True, transpose=True, xp=xp))
        if not input_grad:
            return None
        return self._input_grad_conv(xp, dout, dflat)

    def _dout_grid(self, xp: Any, dout: Array) -> Array:
        _, _, h, w = self._x_shape
        k, p = self.k, self.padding
        hg, wg, tail = _grid_geometry(h, w, k, p)
        q = k - 1 - p
        return ops.to_grid(dout, (hg, wg), (q, q), tail, ws=self._workspace(), key="dout",
                           xp=xp)

    def _input_grad_conv(self, xp: Any, dout: Array, dflat: Array | None) -> Array:
        """dL/dx of a stride-1 convolution: the convolution of dout, padded by k - 1 - p,
        with the flipped kernel, channels swapped (one well-shaped matmul instead of a skinny
        one and a col2im scatter-add). Computed over the forward's grid: dout padded by
        k - 1 - p on a (OH + k-1-p) x (OW + k-1-p) = (H + p) x (W + p) grid."""
        n, f = dout.shape[0], dout.shape[1]
        _, c, h, w = self._x_shape
        k = self.k
        hg, wg, _ = _grid_geometry(h, w, k, self.padding)
        if dflat is None:
            dflat = self._dout_grid(xp, dout)
        w_t = xp.reshape(xp.permute_dims(xp.flip(self.W.data, axis=(2, 3)), (1, 2, 3, 0)),
                         (c, k * k * f))
        dx = xp.reshape(ops.grid_matmul(w_t, dflat, k, wg, n * hg * wg, xp=xp), (c, n, hg, wg))
        return xp.permute_dims(dx[:, :, :h, :w], (1, 0, 2, 3))


def _grid_geometry(h: int, w: int, k: int, p: int) -> tuple[int, int, int]:
    """(Hg, Wg, tail) of the grid a stride-1 k x k convolution with padding p <= k - 1 runs
    on: one (H + p) x (W + p) block per image, the image at row, column (p, p).

    Neighbouring blocks share their padding: a window that runs past the right edge of a row
    reads the next row's p leading zeros, and past the bottom of an image the next image's p
    zero rows (the last image's come from the ``tail`` of zeros, which also covers the
    farthest kernel offset). Every output position (y, x) < (OH, OW) = (H + 2p - k + 1, ...)
    <= (Hg, Wg) thus reads exactly its padded window; the other grid positions are discarded.
    The waste is (Hg*Wg) / (OH*OW) - 1: 7% at 28x28 (p=1, k=3), 0% at 14x14 (p=2), 27% at
    8x8, against 15%, 27% and 56% for a grid padded on every side.
    """
    hg, wg = h + p, w + p
    return hg, wg, (k - 1) * (wg + 1)


def _max_of(xp: Any, parts: list[Array], keep_beats: bool) -> tuple[Array, list[Array] | None]:
    """Elementwise maximum of ``parts``; with ``keep_beats`` also the masks "part i beat every
    earlier part" (i >= 1), from which :func:`_route_max_grad` sends the gradient to the first
    maximum, as PyTorch does, without the input or an argmax."""
    out, beats = parts[0], []
    for part in parts[1:]:
        new = xp.maximum(out, part)
        if keep_beats:
            beats.append(new != out)  # strictly larger; cheaper than re-reading the part
        out = new
    return out, beats if keep_beats else None


def _route_max_grad(dout: Array, beats: list[Array]):
    """Yield (part index, gradient) for each part of :func:`_max_of`, last part first.

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
        img = ops.alloc(xp.zeros, (n, c, h + 2 * p, w + 2 * p), patches.dtype,
                        device(patches))
        ops.add_windows(img, patches, self.stride, xp=xp)
        return img[:, :, p:p + h, p:p + w] if p else img


class MaxPool2d(_Pool2d):
    """Max pooling over k x k windows (stride defaults to k; padding pads with -inf).

    The gradient goes to the first maximum of each window, as in PyTorch. Forward is an
    elementwise maximum over the k*k strided slices (no (N*OH*OW*C, k*k) matrix); in training
    it keeps, per slice, the boolean mask "this slice beat every earlier one", so backward
    needs neither the input nor an argmax.
    """

    _caches = ("_beats",)  # dropped under no_grad

    def forward(self, x: Array) -> Array:
        xp, xpad, oh, ow = self._prepare(x, -float("inf"))
        out, self._beats = _max_of(xp, [xpad[sl] for sl in self._slices(oh, ow)], self.training)
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
        img = xp.permute_dims(ops.alloc(alloc, (c, n, hp, wp), dout.dtype, device(dout)),
                              (1, 0, 2, 3))
        slices = list(self._slices(oh, ow))
        for i, g in _route_max_grad(dout, self._beats):
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


class ConvMaxPool2d(Conv2d):
    """Conv2d followed by MaxPool2d(pool) (stride ``pool``, no padding), fused: the same
    outputs and gradients as ``Sequential(Conv2d(...), MaxPool2d(pool))``, and the same
    parameters W and b as the Conv2d.

    Why: a max-pool over a convolution's output reads it through stride-``pool`` slices, which
    NumPy processes about 9x slower than contiguous memory. Here im2col orders its columns
    pool-offset-major (:func:`xpnet.ops.im2col` with ``pool``), so the convolution's matmul
    writes each of the pool*pool window offsets as one contiguous block and the max (and its
    gradient) run over whole blocks. Convolution outputs a floor-mode pool would drop are not
    computed. Output (N, out_channels, OH // pool, OW // pool).

    On a backend with its own convolution (torch: :func:`xpnet.ops.native_conv2d`) the
    convolution is the backend's and the max runs over the pool*pool strided offsets of its
    output (``path = "im2col"`` keeps the fused im2col form there).

    It pays on large outputs with few channels: SimpleConvNet's 30 x 24 x 24 conv + pool at
    batch 100 takes 6.0 instead of 8.1 ms (forward + backward). With many channels on small
    images the pool-blocked im2col copy runs over short rows and costs more than it saves
    (DeepConvNet keeps Conv2d + MaxPool2d).
    """

    _caches = ("_cols", "_beats")  # dropped under no_grad

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 pool: int = 2, stride: int = 1, padding: int = 0, init: InitSpec = "he",
                 rng: Generator | None = None, dtype: str = "float32",
                 backend: Backend | None = None):
        _positive("pool", pool, "ConvMaxPool2d")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, init=init, rng=rng, dtype=dtype, backend=backend)
        self.pool = pool

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool={self.pool}"

    def _pooled_hw(self, x: Array, oh: int, ow: int) -> tuple[int, int]:
        a, b = oh // self.pool, ow // self.pool
        if a == 0 or b == 0:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; its {oh}x{ow} "
                             f"convolution output is smaller than the {self.pool}x{self.pool} "
                             "pooling window")
        return a, b

    def _pool_slices(self, a: int, b: int) -> list[tuple]:
        """The pool*pool window offsets of the (N, F, OH, OW) output, row-major (the order
        MaxPool2d takes them in: ties go to the same, first, maximum)."""
        q = self.pool
        return [(slice(None), slice(None), slice(i, i + a * q, q), slice(j, j + b * q, q))
                for i in range(q) for j in range(q)]

    def forward(self, x: Array) -> Array:
        xp = self._check(x)
        oh, ow = _out_hw(self, x, self.k, self.stride, self.padding)
        self._use_grid()  # checks the path
        native = self._native(xp)
        if native is not None:  # the backend's convolution, then the max over the offsets
            a, b = self._pooled_hw(x, oh, ow)
            out = self._forward_native(native, x, oh, ow)
            parts = [out[sl] for sl in self._pool_slices(a, b)]
            pooled, self._beats = _max_of(xp, parts, self.training)
            return pooled
        xp, out = self._conv_matrix(x, pool=self.pool)
        n, f, oh, ow = self._out_shape
        a, b = self._pooled_hw(x, oh, ow)
        blocks = xp.reshape(out, (f, self.pool ** 2, n * a * b))
        parts = [blocks[:, i, :] for i in range(self.pool ** 2)]
        pooled, self._beats = _max_of(xp, parts, self.training)
        return xp.permute_dims(xp.reshape(pooled, (f, n, a, b)), (1, 0, 2, 3))

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """As Conv2d's, from the gradient of the pooled output."""
        if getattr(self, "_mode", None) != "native":
            return super().backward(dout, input_grad=input_grad)
        if self._beats is None or self._cols is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode")
        xp = array_namespace(dout)
        n, f, oh, ow = self._out_shape
        a, b = dout.shape[2], dout.shape[3]
        tiled = a * self.pool == oh and b * self.pool == ow  # no row or column dropped
        dconv = ops.alloc(xp.empty if tiled else xp.zeros, (n, f, oh, ow), dout.dtype,
                          device(dout))
        slices = self._pool_slices(a, b)
        for i, g in _route_max_grad(dout, self._beats):
            dconv[slices[i]] = g
        return super().backward(dconv, input_grad=input_grad)

    def _output_grad_matrix(self, dout: Array) -> Array:
        if self._beats is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode")
        xp = array_namespace(dout)
        f = self.out_channels
        d_pooled = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (f, -1))
        blocks = ops.alloc(xp.empty, (f, self.pool ** 2, d_pooled.shape[1]), dout.dtype,
                           device(dout))
        for i, g in _route_max_grad(d_pooled, self._beats):
            blocks[:, i, :] = g
        return xp.reshape(blocks, (f, -1))
