"""The one hook: array work the Array API standard lacks, with a portable fallback and fast paths.

Every function here has a fallback written only in the standard (it runs on array_api_strict) and,
where a library offers something better, a fast path for NumPy, CuPy or torch. Each fast path is
tested against the fallback (``tests/test_ops.py``, which reaches the fallbacks by making
:func:`fast_path_kind` answer 'generic'). Nothing outside this module and :mod:`xpnet.backend`
names a concrete array library. Threads and workspaces live in :mod:`xpnet.threads`, device
random numbers in :mod:`xpnet.rng`.

==================  ===========================================  =================================
function            fallback (standard only)                     fast paths
==================  ===========================================  =================================
``pad2d``           zeros + slice assignment                     numpy, cupy, torch (native pad
                                                                 via array_api_extra.pad)
``windows``         stack of k*k strided slices (a copy)         numpy, cupy (as_strided view),
                                                                 torch (Tensor.unfold view)
``add_windows``     k*k in-place slice-adds (scatter-add)        torch (F.fold when overlapping)
``to_grid``         zeros + slice assignment + concat            numpy, cupy, torch (a reused
                                                                 workspace: borders zeroed once)
``grid_cols``       concat of k*k shifted slices                 numpy, cupy, torch (copies into
                                                                 a reused workspace; numpy splits
                                                                 them over threads)
``grid_matmul``     grid_cols, then one matmul                   numpy (cache-sized column blocks,
                                                                 row-stacked: k shifts copied,
                                                                 not k*k)
``native_conv2d``   None: the layer's own formulations (grid,    torch (F.conv2d and
                    im2col) are the fallback                     aten.convolution_backward:
                                                                 oneDNN on CPU, cuDNN on CUDA)
``relu_``           maximum(a, 0), a new array                   numpy, cupy, torch (in place: a
                                                                 convolution's epilogue on its
                                                                 own fresh output)
``adam_update``     the Adam rule in ~10 in-place standard ops   torch (one fused kernel per
                                                                 parameter, the one
                                                                 ``torch.optim.Adam(fused=True)``
                                                                 runs)
==================  ===========================================  =================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import array_api_compat
import array_api_extra as xpx
import numpy as np
from array_api_compat import array_namespace, device

from . import validate
from .backend import device_scope
from .threads import Workspace, copy_threads, in_threads, single_threaded_blas, thread_scratch

__all__ = ["NativeConv2d", "adam_update", "add_windows", "alloc", "col2im", "fast_path_kind",
           "grid_cols", "im2col", "native_conv2d", "offset_slices", "out_size", "pad2d",
           "relu_", "to_grid", "windows"]

Array = Any


def alloc(make: Callable[..., Array], shape: Any, dtype: Any, dev: Any) -> Array:
    """``make(shape, dtype=, device=)`` on ``dev``: CuPy's creation functions ignore
    ``device=`` under array-api-compat and allocate on the current GPU instead."""
    with device_scope(dev):
        return make(shape, dtype=dtype, device=dev)


def fast_path_kind(xp: Any) -> str:
    """'numpy', 'cupy', 'torch' or 'generic': which fast-path table applies to namespace xp."""
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    return "generic"


def _dispatch(table: dict[str, Callable[..., Array]], fallback: Callable[..., Array],
              xp: Any) -> Callable[..., Array]:
    return table.get(fast_path_kind(xp), fallback)


def out_size(size: int, k: int, stride: int, pad: int = 0) -> int:
    """Output length of a sliding window: floor((size + 2*pad - k) / stride) + 1."""
    return (size + 2 * pad - k) // stride + 1


def offset_slices(kh: int, kw: int, stride: int, oh: int, ow: int,
                  start: tuple[int, int] = (0, 0)
                  ) -> Iterator[tuple[int, int, tuple[slice, slice, slice, slice]]]:
    """Yield (i, j, index) for each kernel offset; ``x[index]`` is the (N, C, OH, OW) strided
    slice of an NCHW array that offset (i, j) of every window reads (windows whose first one
    begins at row, column ``start``)."""
    r0, c0 = start
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(None), slice(None),
                         slice(r0 + i, r0 + i + stride * (oh - 1) + 1, stride),
                         slice(c0 + j, c0 + j + stride * (ow - 1) + 1, stride))


# ----------------------------------------------------------------------------------- pad2d
def _pad2d_generic(xp: Any, x: Array, pad: int, value: float) -> Array:
    n, c, h, w = x.shape
    with device_scope(device(x)):  # CuPy: array-api-compat drops device= here
        out = xp.full((n, c, h + 2 * pad, w + 2 * pad), value, dtype=x.dtype,
                      device=device(x))
    out[:, :, pad:pad + h, pad:pad + w] = x
    return out


def _pad2d_native(xp: Any, x: Array, pad: int, value: float) -> Array:
    # array-api-extra's pad hands constant padding to the library's own pad where one exists
    return xpx.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value, xp=xp)


_PAD = {"numpy": _pad2d_native, "cupy": _pad2d_native, "torch": _pad2d_native}


def pad2d(x: Array, pad: int, value: float = 0.0, *, xp: Any = None) -> Array:
    """Pad the last two axes of an NCHW array by ``pad`` on every side with ``value``."""
    if pad == 0:
        return x
    xp = xp or array_namespace(x)
    return _dispatch(_PAD, _pad2d_generic, xp)(xp, x, pad, value)


# --------------------------------------------------------------------------------- windows
def _windows_generic(xp: Any, x: Array, kh: int, kw: int, stride: int) -> Array:
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride), out_size(w, kw, stride)
    parts = [x[index] for _, _, index in offset_slices(kh, kw, stride, oh, ow)]
    stacked = xp.stack(parts, axis=-1)  # (N, C, OH, OW, kh*kw)
    return xp.reshape(stacked, (n, c, oh, ow, kh, kw))


def _windows_strided(xp: Any, x: Array, kh: int, kw: int, stride: int) -> Array:
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride), out_size(w, kw, stride)
    sn, sc, sh, sw = x.strides
    shape, strides = (n, c, oh, ow, kh, kw), (sn, sc, sh * stride, sw * stride, sh, sw)
    if fast_path_kind(xp) == "numpy":
        return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)
    import cupy  # CuPy arrays have no read-only flag: a writable view, see windows()
    return cupy.lib.stride_tricks.as_strided(x, shape, strides)


def _windows_torch(xp: Any, x: Array, kh: int, kw: int, stride: int) -> Array:
    return x.unfold(2, kh, stride).unfold(3, kw, stride)


_WINDOWS = {"numpy": _windows_strided, "cupy": _windows_strided, "torch": _windows_torch}


def windows(x: Array, kh: int, kw: int, stride: int = 1, *, xp: Any = None) -> Array:
    """All kh x kw windows of an NCHW array, shape (N, C, OH, OW, kh, kw).

    The fast paths return a view (no copy): read-only on NumPy (``writeable=False``); CuPy and
    torch have no read-only arrays, so there the view is writable but must be treated as
    read-only (a write lands in ``x`` and in every overlapping window). The fallback returns a
    copy. xpnet only ever reads it (im2col copies it once).
    """
    xp = xp or array_namespace(x)
    return _dispatch(_WINDOWS, _windows_generic, xp)(xp, x, kh, kw, stride)


# ----------------------------------------------------------------------------- add_windows
def _add_windows_generic(xp: Any, img: Array, patches: Array, stride: int,
                         start: tuple[int, int]) -> Array:
    _, _, oh, ow, kh, kw = patches.shape
    for i, j, index in offset_slices(kh, kw, stride, oh, ow, start):
        img[index] += patches[:, :, :, :, i, j]
    return img


def _add_windows_torch(xp: Any, img: Array, patches: Array, stride: int,
                       start: tuple[int, int]) -> Array:
    n, c, oh, ow, kh, kw = patches.shape
    if stride >= kh and stride >= kw:  # windows do not overlap: the slice loop is cheapest
        return _add_windows_generic(xp, img, patches, stride, start)
    import torch.nn.functional as F
    cols = patches.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)
    used_h, used_w = stride * (oh - 1) + kh, stride * (ow - 1) + kw
    folded = F.fold(cols, (used_h, used_w), (kh, kw), stride=stride)
    r0, c0 = start
    img[:, :, r0:r0 + used_h, c0:c0 + used_w] += folded
    return img


_ADD_WINDOWS = {"torch": _add_windows_torch}


def add_windows(img: Array, patches: Array, stride: int = 1, *,
                start: tuple[int, int] = (0, 0), xp: Any = None) -> Array:
    """Scatter-add: add window patches (N, C, OH, OW, kh, kw) into ``img`` (N, C, H, W) in place,
    the first window at row, column ``start``.

    The adjoint of :func:`windows`; col2im and the pooling backward passes are built on it.
    Returns ``img``.
    """
    xp = xp or array_namespace(img)
    fn = _dispatch(_ADD_WINDOWS, _add_windows_generic, xp)
    return fn(xp, img, patches, stride, start)


# ------------------------------------------------------------------------- im2col / col2im
# im2col's (kh*kw*C, N*OH*OW) matrix, seen as 8 axes: its rows (kh, kw, C) and its columns in
# "pool-blocked" order (P, P, N, A, B), where output pixel (oh, ow) = (P*a + di, P*b + dj). With
# pool=1 that is the plain (N, OH, OW) order; with pool=P the P*P offsets of every P x P pooling
# window sit in P*P contiguous column blocks, so a following max-pool runs on contiguous memory.
_COLS_FROM_WINDOWS = (6, 7, 1, 3, 5, 0, 2, 4)  # (N, C, A, P, B, P, kh, kw) -> column order


def _blocked_windows(xp: Any, win: Array, pool: int) -> Array:
    n, c, oh, ow, kh, kw = win.shape
    a, b = oh // pool, ow // pool  # outputs a floor-mode pool would drop are never computed
    win = win[:, :, :a * pool, :b * pool, ...]
    return xp.permute_dims(xp.reshape(win, (n, c, a, pool, b, pool, kh, kw)), _COLS_FROM_WINDOWS)


def _im2col_generic(xp: Any, win: Array, pool: int, ones_row: bool) -> Array:
    blocked = _blocked_windows(xp, win, pool)
    rows = blocked.shape[0] * blocked.shape[1] * blocked.shape[2]
    cols = xp.reshape(blocked, (rows, -1))
    if not ones_row:
        return cols
    with device_scope(device(cols)):
        ones = xp.ones((1, cols.shape[1]), dtype=cols.dtype, device=device(cols))
    return xp.concat([cols, ones], axis=0)


def _im2col_copy_into(xp: Any, win: Array, pool: int, ones_row: bool) -> Array:
    # one copy of the (strided view of the) windows straight into the result, ones row included
    blocked = _blocked_windows(xp, win, pool)
    shape = tuple(blocked.shape)
    k, m = shape[0] * shape[1] * shape[2], int(np.prod(shape[3:]))
    with device_scope(device(win)):
        cols = xp.empty((k + int(ones_row), m), dtype=win.dtype, device=device(win))
    cols[:k].reshape(shape)[...] = blocked  # reshape of a contiguous block: a view
    if ones_row:
        cols[k] = 1.0
    return cols


_IM2COL = {"numpy": _im2col_copy_into, "cupy": _im2col_copy_into, "torch": _im2col_copy_into}


def im2col(x: Array, kh: int, kw: int, stride: int = 1, pad: int = 0, *, ones_row: bool = False,
           pool: int = 1, xp: Any = None) -> Array:
    """Unfold an NCHW array into a (kh*kw*C, N*OH*OW) matrix: one column per output pixel.

    Rows are ordered (kernel row, kernel column, channel), so a (F, C, kh, kw) weight must be
    permuted to (F, kh, kw, C) before the matmul. This layout makes the single copy run over
    long contiguous rows, and lets ``W @ cols`` give a (F, N*OH*OW) result whose NCHW view
    is channel-major: the next convolution's im2col then reads contiguous memory.
    With ``ones_row`` a last row of ones is appended, so a bias column in W rides along in the
    same matmul (and its gradient comes out of the weight-gradient matmul).
    With ``pool=P`` the columns come in pool-blocked order (P, P, N, OH//P, OW//P) for a
    following P x P max-pool with stride P: see :class:`xpnet.layers.ConvMaxPool2d`. Output
    rows or columns that such a pool would drop (OH or OW not a multiple of P) are left out.
    """
    xp = xp or array_namespace(x)
    win = windows(pad2d(x, pad, xp=xp), kh, kw, stride, xp=xp)
    return _dispatch(_IM2COL, _im2col_generic, xp)(xp, win, pool, ones_row)


def col2im(cols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int = 1,
           pad: int = 0, *, pool: int = 1, xp: Any = None) -> Array:
    """Fold a (kh*kw*C, N*OH*OW) matrix back to NCHW, summing overlaps: the adjoint of im2col
    (``pool`` as there)."""
    xp = xp or array_namespace(cols)
    n, c, h, w = x_shape
    a, b = out_size(h, kh, stride, pad) // pool, out_size(w, kw, stride, pad) // pool
    blocked = xp.reshape(cols, (kh, kw, c, pool, pool, n, a, b))
    with device_scope(device(cols)):
        img = xp.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=cols.dtype, device=device(cols))
    img = xp.permute_dims(img, (1, 0, 2, 3))  # NCHW view of channel-major memory
    for di in range(pool):  # pool offset (di, dj): windows P*stride apart, shifted
        for dj in range(pool):
            patches = xp.permute_dims(blocked[:, :, :, di, dj, ...], (3, 2, 4, 5, 0, 1))
            add_windows(img, patches, stride * pool, start=(di * stride, dj * stride), xp=xp)
    return img[:, :, pad:pad + h, pad:pad + w] if pad else img


# ----------------------------------------------------------------- grid convolution (stride 1)
# A stride-1 k x k convolution computed over the whole padded grid: with the padded input stored
# channel-major and flattened, (C, N*Hg*Wg), kernel offset (i, j) reads the same flat array
# shifted by i*Wg + j. The column matrix is then k*k plain copies of long contiguous rows (no
# strided gather), and the matmul's (F, N*Hg*Wg) output, seen as (F, N, Hg, Wg), holds the
# convolution in its top-left (OH, OW) corner (the rest, where windows wrap, is discarded).
def _to_grid_generic(xp: Any, x: Array, grid_hw: tuple[int, int], start: tuple[int, int], tail: int,
                     ws: Workspace | None, key: str, mask: Array | None) -> Array:
    n, c, h, w = x.shape
    hg, wg = grid_hw
    r0, c0 = start
    if mask is not None:
        x = xp.where(mask, x, xp.zeros_like(x))
    g = alloc(xp.zeros, (c, n, hg, wg), x.dtype, device(x))
    g[:, :, r0:r0 + h, c0:c0 + w] = xp.permute_dims(x, (1, 0, 2, 3))
    flat = xp.reshape(g, (c, n * hg * wg))
    if not tail:
        return flat
    return xp.concat([flat, alloc(xp.zeros, (c, tail), x.dtype, device(x))], axis=1)


def _to_grid_into(xp: Any, x: Array, grid_hw: tuple[int, int], start: tuple[int, int], tail: int,
                  ws: Workspace | None, key: str, mask: Array | None) -> Array:
    n, c, h, w = x.shape
    hg, wg = grid_hw
    r0, c0 = start
    length = n * hg * wg
    shape = (c, length + tail)
    if ws is None:
        buf = alloc(xp.zeros, shape, x.dtype, device(x))
    else:  # only the interior is ever written: the zero borders of a reused buffer stay zero
        buf, _ = ws.get(key, shape, x.dtype, xp=xp, like=x, zero=True)
    grid = buf[:, :length].reshape(c, n, hg, wg)
    src = xp.permute_dims(x, (1, 0, 2, 3))
    if mask is None:
        grid[:, :, r0:r0 + h, c0:c0 + w] = src
    elif fast_path_kind(xp) == "numpy":  # the mask applied while copying: no masked temporary
        np.multiply(src, xp.permute_dims(mask, (1, 0, 2, 3)),
                    out=grid[:, :, r0:r0 + h, c0:c0 + w])
    else:
        grid[:, :, r0:r0 + h, c0:c0 + w] = src * xp.permute_dims(mask, (1, 0, 2, 3))
    return buf


_TO_GRID = {"numpy": _to_grid_into, "cupy": _to_grid_into, "torch": _to_grid_into}


def to_grid(x: Array, grid_hw: tuple[int, int], start: tuple[int, int] = (0, 0), tail: int = 0,
            *, ws: Workspace | None = None, key: str = "grid", mask: Array | None = None,
            xp: Any = None) -> Array:
    """Place NCHW ``x`` into a zero grid of (N, C, Hg, Wg) at row, column ``start`` and return
    it channel-major and flat, (C, N*Hg*Wg + tail), the last ``tail`` columns zero.

    ``mask`` (boolean, x's shape) masks x on the way: x where it is True, else 0 (a ReLU's
    backward, fused into the copy a convolution's backward makes anyway).

    The fast paths keep the buffer in workspace ``ws`` under ``key`` (if given) and write only
    the interior on later calls; the result then stays valid until the next call with that key.
    """
    xp = xp or array_namespace(x)
    fn = _dispatch(_TO_GRID, _to_grid_generic, xp)
    return fn(xp, x, tuple(grid_hw), tuple(start), tail, ws, key, mask)


def _grid_cols_generic(xp: Any, flat: Array, k: int, wg: int, length: int,
                       ones_row: bool, ws: Workspace | None, key: str) -> Array:
    parts = [flat[:, i * wg + j:i * wg + j + length] for i in range(k) for j in range(k)]
    if ones_row:
        parts.append(alloc(xp.ones, (1, length), flat.dtype, device(flat)))
    return xp.concat(parts, axis=0)


def _grid_cols_into(xp: Any, flat: Array, k: int, wg: int, length: int,
                    ones_row: bool, ws: Workspace | None, key: str) -> Array:
    c = flat.shape[0]
    shape = (k * k * c + int(ones_row), length)
    if ws is None:
        cols = alloc(xp.empty, shape, flat.dtype, device(flat))
    else:  # the buffer may be shared with other roles: the ones row is written every time
        cols, _ = ws.get(key, shape, flat.dtype, xp=xp, like=flat)
    if ones_row:
        cols[-1, :] = 1.0

    def copy(b: int) -> None:
        o = (b // k) * wg + b % k
        cols[b * c:(b + 1) * c, :] = flat[:, o:o + length]

    if fast_path_kind(xp) == "numpy":
        # "blas" mode copies in this thread: copy threads would fight OpenBLAS's spinning ones
        in_threads(copy, k * k, None if grid_threading() == "tasks" else 1)
    else:
        for b in range(k * k):
            copy(b)
    return cols


_GRID_COLS = {"numpy": _grid_cols_into, "cupy": _grid_cols_into, "torch": _grid_cols_into}


def grid_cols(flat: Array, k: int, wg: int, length: int, *, ones_row: bool = False,
              ws: Workspace | None = None, key: str = "cols", xp: Any = None) -> Array:
    """The (k*k*C [+1], length) column matrix of a stride-1 k x k convolution over a flat
    channel-major grid of width ``wg`` (from :func:`to_grid`, with a tail of at least
    (k-1)*(wg+1) columns): rows ordered (kernel row, kernel column, channel) as in
    :func:`im2col`, column q holding the window whose top-left corner is grid position q.
    ``ones_row`` appends a row of ones (for a bias column in the weights).

    The fast paths copy into workspace ``ws`` under ``key`` when given (valid until the next
    call with that key); NumPy spreads the k*k block copies over threads.
    """
    xp = xp or array_namespace(flat)
    fn = _dispatch(_GRID_COLS, _grid_cols_generic, xp)
    return fn(xp, flat, k, wg, length, ones_row, ws, key)


#: target size of one column chunk of :func:`grid_matmul` (fits the L2/L3 caches)
GRID_CHUNK_BYTES = 4 * 2**20


def grid_threading() -> str:
    """How the grid's column blocks use the cores (``XPNET_GRID_THREADING``):

    - ``"blas"`` (default): one thread walks the blocks and the BLAS threads each product.
      Fastest on a machine of one's own (BENCHMARKS.md has the figures).
    - ``"tasks"``: the blocks are tasks spread over :func:`copy_threads` Python threads, each
      with a single-threaded BLAS: a thread that loses its core to another process delays
      only its own blocks (a multi-threaded BLAS call waits for its slowest thread). Measured
      slower (0.73-0.78x of "blas" on DeepConvNet): the scipy-openblas build NumPy ships
      barely overlaps single-threaded calls from two threads (BENCHMARKS.md, session 7).
    """
    return validate.env_choice("XPNET_GRID_THREADING",
                               os.environ.get("XPNET_GRID_THREADING", "blas") or "blas",
                               {"blas": "", "tasks": ""})


def _grid_chunks(rows: int, length: int, itemsize: int, threads: int,
                 min_step: int = 256) -> list[tuple[int, int]]:
    # cache-sized, and at least 4 per thread where the columns allow (load balance); never
    # below min_step columns
    step = min(GRID_CHUNK_BYTES // max(1, rows * itemsize), -(-length // (4 * threads)))
    step = max(min_step, step)
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def _grid_matmul_generic(xp: Any, w: Array, flat: Array, k: int, wg: int,
                         length: int, ones_row: bool, transpose: bool) -> Array:
    cols = _grid_cols_generic(xp, flat, k, wg, length, ones_row, None, "cols")
    return w @ cols.T if transpose else w @ cols


def _run_blocks(task: Callable[[int], None], count: int, tasks: bool) -> None:
    """task(0..count-1): on this thread (the BLAS threads each product), or with ``tasks``
    spread over copy_threads() threads, each with a single-threaded BLAS."""
    threads = min(copy_threads(), count) if tasks else 1
    with single_threaded_blas(threads > 1) as blas:
        # without control of the BLAS threads, one thread (no oversubscription)
        in_threads(task, count, threads if blas.controlled else 1)


def _sum_in_order(partials: list[Array]) -> Array:
    """The blocks' partial sums added in block order (deterministic), into the first."""
    total = partials[0]
    for part in partials[1:]:
        total += part
    return total


def _grid_chunk_cols(xp: Any, flat: Array, k: int, wg: int, a: int, b: int,
                     ones_row: bool, ws: Workspace) -> Array:
    c = flat.shape[0]
    cols, _ = ws.get("chunk", (k * k * c + int(ones_row), b - a), flat.dtype, xp=xp, like=flat)
    for i in range(k):
        for j in range(k):
            o = i * wg + j
            blk = (i * k + j) * c
            cols[blk:blk + c, :] = flat[:, a + o:b + o]
    if ones_row:
        cols[-1, :] = 1.0
    return cols


def _grid_matmul_shifts(xp: Any, w: Array, flat: Array, k: int, wg: int,
                         length: int, ones_row: bool, transpose: bool) -> Array:
    # One cache-sized block of columns at a time: copied, then multiplied while still in cache.
    # grid_threading() "blas": one thread, the BLAS threads each product. "tasks": the blocks
    # are independent tasks spread over copy_threads() Python threads that each call a
    # single-threaded BLAS (NumPy and OpenBLAS release the GIL); robust when cores are shared.
    # Each thread's block buffer is its own (thread-local).
    tasks = grid_threading() == "tasks"
    rows = k * k * flat.shape[0] + int(ones_row)
    chunks = _grid_chunks(rows, length, flat.itemsize, copy_threads() if tasks else 1)
    # None when transposing (partials are summed instead); task() writes it only otherwise
    out: Array = None if transpose else xp.empty((w.shape[0], length), dtype=flat.dtype)
    partials: list[Array] = [None] * len(chunks)  # summed in chunk order: deterministic

    def task(i: int) -> None:
        a, b = chunks[i]
        cols = _grid_chunk_cols(xp, flat, k, wg, a, b, ones_row, thread_scratch())
        if transpose:
            # (rows, F) = cols @ w.T, transposed at the end: OpenBLAS runs this long-K
            # product 1.3-1.8x faster in this orientation than as w @ cols.T on DeepConvNet's
            # layers (benchmarks/conv_gemm_floor.py); the DeepConvNet step ~10% faster
            partials[i] = cols @ w[:, a:b].T
        else:
            np.matmul(w, cols, out=out[:, a:b])

    _run_blocks(task, len(chunks), tasks)
    if not transpose:
        return out
    return np.ascontiguousarray(_sum_in_order(partials).T)


def _row_cols(xp: Any, flat: Array, k: int, wg: int, a: int, n: int, ones_row: bool,
              ws: Workspace) -> Array:
    """The (k*C [+1], n) kernel-column shifts of grid columns [a, a + n): row (j, c) holds
    flat[c, a + j : a + j + n] (the k kernel rows are not copied: see _grid_matmul_rows)."""
    c = flat.shape[0]
    cols, _ = ws.get("chunk", (k * c + int(ones_row), n), flat.dtype, xp=xp, like=flat)
    for j in range(k):
        cols[j * c:(j + 1) * c, :] = flat[:, a + j:a + j + n]
    if ones_row:
        cols[-1, :] = 1.0
    return cols


def _stack_rows(w: Array, k: int, ones_row: bool) -> Array:
    """(M, k*k*C [+1]) weights, columns (i, j, c) [+ bias], as (k*M, k*C [+1]): block i is
    kernel row i; the bias column is kept in block 0 only (the others see zeros)."""
    m = w.shape[0]
    kc = (w.shape[1] - int(ones_row)) // k
    stacked = np.zeros((k * m, kc + int(ones_row)), dtype=w.dtype)
    stacked[:, :kc] = w[:, :k * kc].reshape(m, k, kc).transpose(1, 0, 2).reshape(k * m, kc)
    if ones_row:
        stacked[:m, -1] = w[:, -1]
    return stacked


def _grid_matmul_rows(xp: Any, w: Array, flat: Array, k: int, wg: int,
                      length: int, ones_row: bool, transpose: bool) -> Array:
    # The row-stacked form of w @ cols: kernel offset (i, j) reads the grid shifted by
    # i*wg + j, so cols = the k column shifts (j) of the grid, themselves shifted by i*wg.
    # Only the k column shifts are copied (k*C rows, not k*k*C), one cache-sized block of
    # columns at a time, extended by (k-1)*wg columns for the row shifts, and the products
    # are arranged around them:
    # - forward (and the input gradient, the same convolution): the k kernel rows stacked as
    #   one (k*M, k*C) matrix, one product per block (k times taller than w: BLAS runs it
    #   near its best), then out = sum over i of block i's rows shifted left by i*wg;
    # - weight gradient: for each kernel row i, cols shifted by i*wg times the output
    #   gradient's block, in the orientation (rows, M) = cols @ dout.T that OpenBLAS runs
    #   fastest for this long-K product; partial sums added in block order (deterministic).
    # k times less copying and packing than the k*k-shift column matrix: per product 0.9-1.4x
    # on DeepConvNet's layers on a quiet host (more while other processes contend for the
    # shared cache), the whole step 1.06x (BENCHMARKS.md, session 7). grid_threading()
    # "blas": one thread walks the blocks, the BLAS threads each product; "tasks": blocks
    # spread over copy_threads() threads, one-threaded BLAS.
    tasks = grid_threading() == "tasks"
    c = flat.shape[0]
    rows, ext = k * c + int(ones_row), (k - 1) * wg
    # blocks of at least 8 row shifts' worth of columns: each block computes (k-1)*wg
    # columns it does not keep (at most 1/8 more work on very wide grids)
    chunks = _grid_chunks(rows, length, flat.itemsize, copy_threads() if tasks else 1,
                          min_step=max(256, 8 * ext))
    m = w.shape[0]
    stacked: Array = None if transpose else _stack_rows(w, k, ones_row)
    out: Array = None if transpose else np.empty((m, length), dtype=flat.dtype)
    partials: list[Array] = [None] * len(chunks)  # summed in chunk order: deterministic

    def task(t: int) -> None:
        a, b = chunks[t]
        n = b - a
        scratch = thread_scratch()
        cols = _row_cols(xp, flat, k, wg, a, n + ext, ones_row, scratch)
        if transpose:
            dout_t = w[:, a:b].T
            part = np.empty((k, rows, m), dtype=flat.dtype)
            for i in range(k):
                np.matmul(cols[:, i * wg:i * wg + n], dout_t, out=part[i])
            partials[t] = part
            return
        y, _ = scratch.get("rows_out", (k * m, n + ext), flat.dtype, xp=xp, like=flat)
        np.matmul(stacked, cols, out=y)
        block = out[:, a:b]
        if k == 1:
            block[...] = y[:, :n]
            return
        np.add(y[:m, :n], y[m:2 * m, wg:wg + n], out=block)
        for i in range(2, k):
            block += y[i * m:(i + 1) * m, i * wg:i * wg + n]

    _run_blocks(task, len(chunks), tasks)
    if not transpose:
        return out
    total = _sum_in_order(partials)
    kc = k * c
    dw = np.empty((m, k * kc + int(ones_row)), dtype=flat.dtype)
    for i in range(k):
        dw[:, i * kc:(i + 1) * kc] = total[i, :kc].T
    if ones_row:
        dw[:, -1] = total[0, -1]
    return dw


#: below this many input channels the grid fast path copies all k*k shifts
#: (_grid_matmul_shifts): the copies are cheap there, and the row-stacked product's inner
#: dimension k*C would be too short for BLAS (DeepConvNet's 1-channel first layer: ~2x faster)
ROW_STACK_MIN_CHANNELS = 4


def _grid_matmul_fast(xp: Any, w: Array, flat: Array, k: int, wg: int,
                      length: int, ones_row: bool, transpose: bool) -> Array:
    form = _grid_matmul_rows if flat.shape[0] >= ROW_STACK_MIN_CHANNELS else _grid_matmul_shifts
    return form(xp, w, flat, k, wg, length, ones_row, transpose)


_GRID_MATMUL = {"numpy": _grid_matmul_fast}


def grid_matmul(w: Array, flat: Array, k: int, wg: int, length: int, *, ones_row: bool = False,
                transpose: bool = False, xp: Any = None) -> Array:
    """``w @ cols`` (or, with ``transpose``, ``w @ cols.T``) for cols = :func:`grid_cols`
    (flat, k, wg, length, ones_row=ones_row): a stride-1 convolution's forward product
    (w: (F, k*k*C [+1]) -> (F, length)) or its weight gradient (w: the (F, length) output
    gradient on the grid -> (F, k*k*C [+1])).

    The fallback builds the whole column matrix. The NumPy fast path never does: it copies
    only the k kernel-column shifts (k*C rows, not k*k*C) of one cache-sized block of columns
    at a time (``GRID_CHUNK_BYTES``, into a per-thread buffer) and multiplies it while it is
    still in cache, with the k kernel rows stacked into one taller weight matrix and their
    outputs added back with row shifts (row-stacked form, see the code), so no column matrix
    of tens of MB is written, faulted in or kept; the weight-gradient partial sums are added
    in block order (deterministic). :func:`grid_threading` says how the blocks use the cores.
    """
    xp = xp or array_namespace(flat)
    fn = _dispatch(_GRID_MATMUL, _grid_matmul_generic, xp)
    return fn(xp, w, flat, k, wg, length, ones_row, transpose)


def _relu_generic(xp: Any, a: Array) -> Array:
    return xp.maximum(a, xp.zeros_like(a))


def _relu_numpy(xp: Any, a: Array) -> Array:
    return np.maximum(a, 0, out=a)


def _relu_cupy(xp: Any, a: Array) -> Array:
    import cupy

    return cupy.maximum(a, 0, out=a)


def _relu_torch(xp: Any, a: Array) -> Array:
    return a.relu_()


_RELU = {"numpy": _relu_numpy, "cupy": _relu_cupy, "torch": _relu_torch}


def relu_(a: Array, *, xp: Any = None) -> Array:
    """max(a, 0), in place where the backend allows (the fallback returns a new array): the
    ReLU epilogue of a convolution on the output it has just made, in one pass over contiguous
    memory instead of a layer's passes over a strided view. Only for arrays nobody else holds."""
    xp = xp or array_namespace(a)
    return _dispatch(_RELU, _relu_generic, xp)(xp, a)


# ------------------------------------------------------------------ the library's own convolution
class NativeConv2d(NamedTuple):
    """A library's own 2-D convolution (NCHW, square kernel, symmetric padding, no bias
    broadcasting tricks): ``forward(x, w, b, stride, padding) -> out`` and
    ``backward(dout, x, w, stride, padding, input_grad) -> (dx or None, dw, db)``."""

    forward: Callable[..., Array]
    backward: Callable[..., tuple[Array | None, Array, Array]]


def _conv2d_torch_forward(x: Array, w: Array, b: Array, stride: int, padding: int) -> Array:
    import torch
    return torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding)


def _conv2d_torch_backward(dout: Array, x: Array, w: Array, stride: int, padding: int,
                           input_grad: bool) -> tuple[Array | None, Array, Array]:
    import torch
    # the kernel autograd itself calls for conv2d (one call: all three gradients)
    dx, dw, db = torch.ops.aten.convolution_backward(
        dout, x, w, [w.shape[0]], [stride, stride], [padding, padding], [1, 1], False,
        [0, 0], 1, [bool(input_grad), True, True])
    return dx, dw, db


_NATIVE_CONV2D = {"torch": NativeConv2d(_conv2d_torch_forward, _conv2d_torch_backward)}


def native_conv2d(xp: Any) -> NativeConv2d | None:
    """The backend's own convolution, or None where it has none (NumPy, CuPy, any other
    standard library: :class:`xpnet.Conv2d` then runs its grid or im2col formulation, which
    is the fallback every native path is tested against).

    On torch it is ``F.conv2d`` and the ``convolution_backward`` kernel autograd uses (oneDNN
    on CPU, cuDNN on CUDA): an xpnet model on the torch backend convolves as fast as the same
    model in PyTorch, under torch's own settings. On CUDA those allow TF32 for float32
    convolutions (~1e-3 relative error) and non-deterministic cuDNN algorithms, as for any
    PyTorch model; ``torch.backends.cudnn.allow_tf32 = False`` and
    ``torch.backends.cudnn.deterministic = True`` give full float32 and bit-reproducible runs
    (xpnet's grid and im2col paths are float32 and deterministic everywhere). NumPy has no
    convolution; xpnet's grid is its fast path there.
    """
    return _NATIVE_CONV2D.get(fast_path_kind(xp))


# ------------------------------------------------------------------ the Adam update
def _adam_generic(xp: Any, p: Array, g: Array, m: Array, v: Array, lr: float, beta1: float,
                  beta2: float, eps: float, step: int) -> None:
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    # in-place on one temporary: every full-size allocation is memory traffic
    update = xp.sqrt(v)
    update *= 1.0 / math.sqrt(1.0 - beta2 ** step)
    update += eps
    update = m / update
    update *= lr / (1.0 - beta1 ** step)
    p -= update


def _adam_torch(xp: Any, p: Array, g: Array, m: Array, v: Array, lr: float, beta1: float,
                beta2: float, eps: float, step: int) -> None:
    import torch
    fused = getattr(torch, "_fused_adam_", None)
    if fused is None or p.dtype != g.dtype or not g.is_contiguous():
        _adam_generic(xp, p, g, m, v, lr, beta1, beta2, eps, step)
        return
    # the kernel reads the step count from a float tensor on the parameter's device and
    # updates m, v and p in one pass, with the same bias-corrected rule as the fallback
    t = torch.full((), float(step), dtype=torch.float32, device=p.device)
    fused([p], [g], [m], [v], [], [t], lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
          eps=eps, amsgrad=False, maximize=False)


_ADAM = {"torch": _adam_torch}


def adam_update(p: Array, g: Array, m: Array, v: Array, *, lr: float, beta1: float,
                beta2: float, eps: float, step: int) -> None:
    """One bias-corrected Adam update, in place on ``p``, ``m`` and ``v``::

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g**2
        p -= lr / (1 - b1**step) * m / (sqrt(v) / sqrt(1 - b2**step) + eps)

    The standard fallback takes about ten passes over the parameter, each a separate call;
    for small parameters the calls, not the arithmetic, are the cost. On torch the fused
    kernel does it in one call (the results agree to float rounding)."""
    xp = array_namespace(p)
    _dispatch(_ADAM, _adam_generic, xp)(xp, p, g, m, v, lr, beta1, beta2, eps, step)
