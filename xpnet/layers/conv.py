"""Convolution on NCHW arrays: Conv2d, ConvMaxPool2d, and the paths that compute them.

A path is an object whose ``forward`` returns the output and ONE record, and whose
``backward`` takes that record back; the layer saves the record per call
(:meth:`xpnet.Module.save_for_backward`), so one Conv2d may be used several times.

- :class:`NativePath`: the backend's own convolution (:func:`xpnet.ops.native_conv2d`:
  torch). "auto" picks it wherever the backend has one.
- :class:`GridPath`: stride 1 with padding <= k - 1 (nearly every conv net's 3x3 and 5x5
  layers). The padded input is stored channel-major and flat, one (H + p) x (W + p) block per
  image with the padding shared between neighbours, so kernel offset (i, j) is the same flat
  array shifted by i*(W + p) + j. Its column matrix is k*k contiguous copies, made and
  multiplied one cache-sized block at a time and never kept (:func:`xpnet.ops.grid_matmul`);
  the weight gradient rebuilds the blocks; the input gradient is a convolution of the output
  gradient, padded by k - 1 - p on the same grid, with the flipped kernel (one well-shaped
  matmul instead of a skinny one plus a col2im scatter-add).
- :class:`Im2colPath`: every other convolution (stride > 1, wider padding) and
  :class:`ConvMaxPool2d`: im2col + one large matmul, and col2im (a scatter-add of slices over
  the kernel offsets) for the input gradient at stride > 1.

The grid and im2col paths are the portable fallback every native path is tested against.

``Conv2d.forward(x, relu=True)`` is ``relu(conv(x))`` with the ReLU as an epilogue: applied in
place to the path's fresh, contiguous output (:func:`xpnet.ops.relu_`), and its boolean mask
applied while backward copies the output gradient (:class:`Sequential
<xpnet.layers.Sequential>` runs a Conv2d followed by a ReLU this way).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from .. import ops, validate
from ..backend import Backend
from ..grad_mode import grad_enabled
from ..init import InitSpec, init_array
from ..module import Module
from ..rng import Generator, check_generator, default_generator
from ..threads import Workspace
from .pooling import check_window, max_of, out_hw, route_max_grad

__all__ = ["Conv2d", "ConvMaxPool2d"]

Array = Any

PATHS = ("auto", "grid", "im2col")


class NativeRecord(NamedTuple):
    """What the native backward needs: the input itself (kept by reference)."""

    path: NativePath
    x: Array


class GridRecord(NamedTuple):
    """What the grid backward needs: the padded input on the grid, and the input's shape."""

    path: GridPath
    grid: Array
    x_shape: tuple[int, int, int, int]


class Im2colRecord(NamedTuple):
    """What the im2col backward needs: the column matrix (with its ones row), the input's
    shape and the pool blocking of its columns."""

    path: Im2colPath
    cols: Array
    x_shape: tuple[int, int, int, int]
    pool: int


def _w_matrix(layer: Conv2d, xp: Any) -> Array:
    """W as (F, kh*kw*C), matching the row order of :func:`xpnet.ops.im2col`."""
    return xp.reshape(xp.permute_dims(layer.W.data, (0, 2, 3, 1)), (layer.out_channels, -1))


def _w_aug(layer: Conv2d, xp: Any) -> Array:
    """[W as (F, kh*kw*C) | b]: the bias rides in the matmul against a ones row."""
    return xp.concat([_w_matrix(layer, xp), xp.reshape(layer.b.data, (-1, 1))], axis=1)


def _split_aug(layer: Conv2d, xp: Any, dw_aug: Array) -> tuple[Array, Array]:
    """(dW, db) from the (F, kh*kw*C + 1) gradient of :func:`_w_aug`."""
    f, c, k = layer.out_channels, layer.in_channels, layer.k
    return xp.permute_dims(xp.reshape(dw_aug[:, :-1], (f, k, k, c)), (0, 3, 1, 2)), \
        dw_aug[:, -1]


def grid_geometry(h: int, w: int, k: int, p: int) -> tuple[int, int, int]:
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


def _grid_input_grad(layer: Conv2d, xp: Any, dout: Array, x_shape: tuple[int, ...],
                     dflat: Array | None = None) -> Array:
    """dL/dx of a stride-1 convolution: the convolution of dout, padded by k - 1 - p, with
    the flipped kernel, channels swapped. Computed over the forward's grid: dout padded by
    k - 1 - p on a (OH + k-1-p) x (OW + k-1-p) = (H + p) x (W + p) grid."""
    n, f = dout.shape[0], dout.shape[1]
    _, c, h, w = x_shape
    k = layer.k
    hg, wg, _ = grid_geometry(h, w, k, layer.padding)
    if dflat is None:
        dflat = _dout_grid(layer, xp, dout, x_shape)
    w_t = xp.reshape(xp.permute_dims(xp.flip(layer.W.data, axis=(2, 3)), (1, 2, 3, 0)),
                     (c, k * k * f))
    dx = xp.reshape(ops.grid_matmul(w_t, dflat, k, wg, n * hg * wg, xp=xp), (c, n, hg, wg))
    return xp.permute_dims(dx[:, :, :h, :w], (1, 0, 2, 3))


def _dout_grid(layer: Conv2d, xp: Any, dout: Array, x_shape: tuple[int, ...],
               relu_mask: Array | None = None) -> Array:
    """dout padded by k - 1 - p on the forward's grid (a transient workspace array); with
    ``relu_mask`` (a ReLU epilogue's "output > 0"), dout where it is True, else 0."""
    _, _, h, w = x_shape
    k, p = layer.k, layer.padding
    hg, wg, tail = grid_geometry(h, w, k, p)
    q = k - 1 - p
    return ops.to_grid(dout, (hg, wg), (q, q), tail, ws=layer._workspace(), key="dout",
                       mask=relu_mask, xp=xp)


def _relu_grad(xp: Any, dout: Array, relu_mask: Array | None) -> Array:
    """dout through a ReLU epilogue whose "output > 0" was ``relu_mask`` (None: none)."""
    return dout if relu_mask is None else xp.where(relu_mask, dout, xp.zeros_like(dout))


class NativePath:
    """The backend's own convolution; backward needs x itself, kept by reference (an input
    overwritten in place before backward, as by no xpnet code, would change the weight
    gradient)."""

    name = "native"

    def __init__(self, impl: ops.NativeConv2d):
        self.impl = impl

    def forward(self, layer: Conv2d, xp: Any, x: Array, slot: int,
                relu: bool = False) -> tuple[Array, Any]:
        y = self.impl.forward(x, layer.W.data, layer.b.data, layer.stride, layer.padding)
        if relu:
            y = ops.relu_(y, xp=xp)
        return y, NativeRecord(self, x) if layer.training else None

    def backward(self, layer: Conv2d, xp: Any, rec: NativeRecord, dout: Array,
                 input_grad: bool, relu_mask: Array | None = None
                 ) -> tuple[Array | None, Array, Array]:
        return self.impl.backward(_relu_grad(xp, dout, relu_mask), rec.x, layer.W.data,
                                  layer.stride, layer.padding, input_grad)


class GridPath:
    """Stride 1 over a shared-padding grid (see :func:`grid_geometry`)."""

    name = "grid"

    def forward(self, layer: Conv2d, xp: Any, x: Array, slot: int,
                relu: bool = False) -> tuple[Array, Any]:
        n, _, h, w = x.shape
        k, p, f = layer.k, layer.padding, layer.out_channels
        oh, ow = out_hw(layer, x, k, layer.stride, p)
        hg, wg, tail = grid_geometry(h, w, k, p)
        # the padded input is all backward needs: the columns are rebuilt there, block by
        # block. Training keeps it in the workspace, one buffer per use of the layer in a pass
        # (``slot``); evaluation and no_grad keep nothing: a fresh grid, freed after the forward
        ws = layer._workspace() if layer.training and grad_enabled() else None
        grid = ops.to_grid(x, (hg, wg), (p, p), tail, ws=ws, key=f"x{slot}", xp=xp)
        out = ops.grid_matmul(_w_aug(layer, xp), grid, k, wg, n * hg * wg, ones_row=True,
                              xp=xp)
        if relu:  # grid_matmul's output is fresh: the epilogue runs in place
            out = ops.relu_(out, xp=xp)
        out = xp.reshape(out, (f, n, hg, wg))
        rec = GridRecord(self, grid, tuple(x.shape)) if layer.training else None
        return xp.permute_dims(out[:, :, :oh, :ow], (1, 0, 2, 3)), rec

    def backward(self, layer: Conv2d, xp: Any, rec: GridRecord, dout: Array,
                 input_grad: bool, relu_mask: Array | None = None
                 ) -> tuple[Array | None, Array, Array]:
        n = dout.shape[0]
        _, _, h, w = rec.x_shape
        k = layer.k
        hg, wg, _ = grid_geometry(h, w, k, layer.padding)
        q = k - 1 - layer.padding
        # dout padded by q on the forward's grid (the input gradient's convolution reads it);
        # the same array shifted by q rows and q columns is dout at the grid's corner, zeros
        # elsewhere: the output gradient matching the forward's columns (weight gradient)
        # (through a ReLU epilogue's mask, applied during this copy)
        dflat = _dout_grid(layer, xp, dout, rec.x_shape, relu_mask)
        shift = q * wg + q
        dgrid = dflat[:, shift:shift + n * hg * wg]
        dw, db = _split_aug(layer, xp, ops.grid_matmul(dgrid, rec.grid, k, wg, n * hg * wg,
                                                       ones_row=True, transpose=True, xp=xp))
        dx = _grid_input_grad(layer, xp, dout, rec.x_shape, dflat) if input_grad else None
        return dx, dw, db


class Im2colPath:
    """im2col + one matmul; columns pool-offset-major for ConvMaxPool2d (``pool`` > 1)."""

    name = "im2col"

    def matrix_forward(self, layer: Conv2d, xp: Any, x: Array, pool: int
                       ) -> tuple[Array, Im2colRecord | None]:
        """(W @ cols, record): the (F, N*OH*OW) output, columns in im2col's ``pool`` order."""
        # a ones row in cols and the bias as W's last column: the bias add rides in the matmul
        cols = ops.im2col(x, layer.k, layer.k, layer.stride, layer.padding, ones_row=True,
                          pool=pool, xp=xp)
        rec = Im2colRecord(self, cols, tuple(x.shape), pool) if layer.training else None
        return _w_aug(layer, xp) @ cols, rec

    def forward(self, layer: Conv2d, xp: Any, x: Array, slot: int,
                relu: bool = False) -> tuple[Array, Any]:
        oh, ow = out_hw(layer, x, layer.k, layer.stride, layer.padding)
        out, rec = self.matrix_forward(layer, xp, x, 1)
        if relu:  # the matmul's output is fresh: the epilogue runs in place
            out = ops.relu_(out, xp=xp)
        out = xp.reshape(out, (layer.out_channels, x.shape[0], oh, ow))
        return xp.permute_dims(out, (1, 0, 2, 3)), rec

    def matrix_backward(self, layer: Conv2d, xp: Any, rec: Im2colRecord, d: Array,
                        dout: Array | None, input_grad: bool
                        ) -> tuple[Array | None, Array, Array]:
        """Gradients from ``d``, the output gradient as the forward's (F, N*OH*OW) matrix
        (``dout`` is the same as (N, F, OH, OW) when ``pool`` is 1)."""
        dw, db = _split_aug(layer, xp, d @ rec.cols.T)
        if not input_grad:
            return None, dw, db
        if layer.stride == 1 and rec.pool == 1 and layer.padding <= layer.k - 1:
            return _grid_input_grad(layer, xp, dout, rec.x_shape), dw, db  # a convolution
        dcols = _w_matrix(layer, xp).T @ d
        dx = ops.col2im(dcols, rec.x_shape, layer.k, layer.k, layer.stride, layer.padding,
                        pool=rec.pool, xp=xp)
        return dx, dw, db

    def backward(self, layer: Conv2d, xp: Any, rec: Im2colRecord, dout: Array,
                 input_grad: bool, relu_mask: Array | None = None
                 ) -> tuple[Array | None, Array, Array]:
        dout = _relu_grad(xp, dout, relu_mask)
        d = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (layer.out_channels, -1))
        return self.matrix_backward(layer, xp, rec, d, dout, input_grad)


_GRID, _IM2COL = GridPath(), Im2colPath()


class Conv2d(Module):
    """2-D convolution (cross-correlation) with square kernels.

    W has shape (out_channels, in_channels, k, k), b (out_channels,). Input (N, C, H, W),
    output (N, out_channels, OH, OW) with OH = (H + 2*padding - k) // stride + 1.
    """

    autocast = True  # runs in the low dtype under xpnet.autocast (xpnet.precision)

    #: "auto" (the backend's own convolution where it has one, :func:`xpnet.ops.native_conv2d`:
    #: torch; else the grid where it applies: stride 1 and padding <= k - 1; else im2col),
    #: "grid" (the grid; im2col where it does not apply) or "im2col" (im2col + one matmul; the
    #: input gradient by col2im, or for stride 1 as a convolution on the grid)
    path = "auto"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, init: InitSpec = "he",
                 rng: Generator | None = None, dtype: str = "float32",
                 backend: Backend | None = None):
        super().__init__()
        owner = type(self).__name__
        validate.positive_int(owner, "in_channels", in_channels)
        validate.positive_int(owner, "out_channels", out_channels)
        check_window(owner, kernel_size, stride, padding)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.k, self.stride, self.padding = kernel_size, stride, padding
        rng = check_generator(type(self).__name__, rng) or default_generator()  # advances
        fan_in, fan_out = in_channels * kernel_size ** 2, out_channels * kernel_size ** 2
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.W = self.add_param("W", init_array(init, rng, shape, fan_in, fan_out, dtype,
                                                backend))
        self.b = self.add_param("b", init_array("zeros", rng, (out_channels,), fan_in,
                                                fan_out, dtype, backend))

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, k={self.k}, stride={self.stride}, "
                f"padding={self.padding}")

    def _check(self, x: Array) -> Any:
        expect = f"(N, {self.in_channels}, H, W)"
        xp = validate.layer_input(self, x, 4, expect, like=self.W.data)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: input x has shape {tuple(x.shape)}; expected {expect}")
        return xp

    def _select_path(self, xp: Any) -> NativePath | GridPath | Im2colPath:
        """The path a forward on namespace ``xp`` takes (see :attr:`path`)."""
        validate.choice(repr(self), "path", self.path, PATHS)
        if self.path == "auto":
            native = ops.native_conv2d(xp)
            if native is not None:
                return NativePath(native)
        if self.path != "im2col" and self.stride == 1 and self.padding <= self.k - 1:
            return _GRID
        return _IM2COL

    def _workspace(self) -> Workspace:
        """Arrays kept from step to step (set outside the per-call records on purpose: it
        holds buffers, one per use of the layer in a pass, not one call's values)."""
        ws = self.__dict__.get("_ws")
        if ws is None:
            ws = self.__dict__["_ws"] = Workspace()
        return ws

    def _slot(self) -> int:
        """Which use of this layer in the current pass a forward is (0 for the first)."""
        return len(self.__dict__.get("_calls") or ()) - 1

    def forward(self, x: Array, *, relu: bool = False) -> Array:
        """The convolution of x; with ``relu=True``, relu of it, the ReLU fused as an epilogue
        (in place on the fresh output; its boolean mask kept, a quarter of the output's size,
        and applied during backward's own copy of the output gradient). backward then takes
        the gradient of that ReLU's output."""
        xp = self._check(x)
        validate.flag(repr(self), "relu", relu)
        out_hw(self, x, self.k, self.stride, self.padding)
        y, rec = self._select_path(xp).forward(self, xp, x, self._slot(), relu)
        # the mask, not y: a caller may change y in place before backward (none kept, and
        # none computed, without a record or under no_grad)
        keep_mask = relu and rec is not None and grad_enabled()
        self.save_for_backward(rec, y > 0 if keep_mask else None)
        return y

    def _record(self) -> tuple[Any, Array | None]:
        rec, relu_mask = self.saved()
        if rec is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode "
                               "first")
        return rec, relu_mask

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """Fill W.grad and b.grad; return the input gradient, or None with
        ``input_grad=False`` (a first layer: the input gradient is then never computed)."""
        rec, relu_mask = self._record()
        dx, dw, db = rec.path.backward(self, array_namespace(dout), rec, dout, input_grad,
                                       relu_mask)
        self.W.grad, self.b.grad = dw, db
        return dx if input_grad else None


class ConvMaxPool2d(Conv2d):
    """Conv2d followed by MaxPool2d(pool) (stride ``pool``, no padding), fused: the same
    outputs and gradients as ``Sequential(Conv2d(...), MaxPool2d(pool))``, and the same
    parameters W and b as the Conv2d. It lives with the convolutions because it is one: it
    owns W and b and runs their paths, with the max as an epilogue (the max helpers are the
    pooling module's).

    Why: a max-pool over a convolution's output reads it through stride-``pool`` slices, which
    NumPy processes several times slower than contiguous memory. Here im2col orders its columns
    pool-offset-major (:func:`xpnet.ops.im2col` with ``pool``), so the convolution's matmul
    writes each of the pool*pool window offsets as one contiguous block and the max (and its
    gradient) run over whole blocks. Convolution outputs a floor-mode pool would drop are not
    computed. Output (N, out_channels, OH // pool, OW // pool).

    On a backend with its own convolution (torch: :func:`xpnet.ops.native_conv2d`) the
    convolution is the backend's and the max runs over the pool*pool strided offsets of its
    output (``path = "im2col"`` keeps the fused im2col form there). It pays on large outputs
    with few channels; with many channels on small images the pool-blocked im2col copy runs
    over short rows and costs more than it saves.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 pool: int = 2, stride: int = 1, padding: int = 0, init: InitSpec = "he",
                 rng: Generator | None = None, dtype: str = "float32",
                 backend: Backend | None = None):
        validate.positive_int("ConvMaxPool2d", "pool", pool)
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

    def _pool_slices(self, a: int, b: int) -> list[tuple[slice, ...]]:
        """The pool*pool window offsets of the (N, F, OH, OW) output, row-major (the order
        MaxPool2d takes them in: ties go to the same, first, maximum)."""
        q = self.pool
        return [(slice(None), slice(None), slice(i, i + a * q, q), slice(j, j + b * q, q))
                for i in range(q) for j in range(q)]

    def forward(self, x: Array, *, relu: bool = False) -> Array:
        """The pooled convolution of x (``relu=True`` is refused: its epilogue is the max;
        a ReLU layer after it runs on the pool*pool times smaller pooled output)."""
        if validate.flag(repr(self), "relu", relu):
            raise ValueError(f"{self!r}: relu=True is not supported; put a ReLU layer after it")
        xp = self._check(x)
        oh, ow = out_hw(self, x, self.k, self.stride, self.padding)
        a, b = self._pooled_hw(x, oh, ow)
        path = self._select_path(xp)
        if isinstance(path, NativePath):  # the backend's convolution, then the max
            out, rec = path.forward(self, xp, x, self._slot())
            pooled, beats = max_of(xp, [out[sl] for sl in self._pool_slices(a, b)],
                                   self.training)
            self.save_for_backward(rec, beats, tuple(out.shape))
            return pooled
        n, f = x.shape[0], self.out_channels
        out, rec = _IM2COL.matrix_forward(self, xp, x, self.pool)
        blocks = xp.reshape(out, (f, self.pool ** 2, n * a * b))
        pooled, beats = max_of(xp, [blocks[:, i, :] for i in range(self.pool ** 2)],
                               self.training)
        self.save_for_backward(rec, beats, None)
        return xp.permute_dims(xp.reshape(pooled, (f, n, a, b)), (1, 0, 2, 3))

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """As Conv2d's, from the gradient of the pooled output."""
        rec, beats, conv_shape = self.saved()
        if rec is None or beats is None:
            raise RuntimeError(f"{self!r}: backward needs a forward pass in training mode")
        xp = array_namespace(dout)
        f = self.out_channels
        if isinstance(rec, NativeRecord):
            n, _, oh, ow = conv_shape
            a, b = dout.shape[2], dout.shape[3]
            tiled = a * self.pool == oh and b * self.pool == ow  # no row or column dropped
            dconv = ops.alloc(xp.empty if tiled else xp.zeros, conv_shape, dout.dtype,
                              device(dout))
            slices = self._pool_slices(a, b)
            for i, g in route_max_grad(dout, beats):
                dconv[slices[i]] = g
            dx, dw, db = rec.path.backward(self, xp, rec, dconv, input_grad)
        else:
            d_pooled = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (f, -1))
            blocks = ops.alloc(xp.empty, (f, self.pool ** 2, d_pooled.shape[1]), dout.dtype,
                               device(dout))
            for i, g in route_max_grad(d_pooled, beats):
                blocks[:, i, :] = g
            d = xp.reshape(blocks, (f, -1))
            dx, dw, db = _IM2COL.matrix_backward(self, xp, rec, d,
                                                 dout if self.pool == 1 else None, input_grad)
        self.W.grad, self.b.grad = dw, db
        return dx if input_grad else None
