"""The one hook: array work the Array API standard lacks, with a portable fallback and fast paths.

Every function here has a fallback written only in the standard (it runs on array_api_strict) and,
where a library offers something better, a fast path for NumPy, CuPy or torch. Each fast path is
tested against the fallback (``tests/test_ops.py``). Nothing outside this module and
:mod:`xpnet.backend` names a concrete array library.

==================  ===========================================  =================================
function            fallback (standard only)                     fast paths
==================  ===========================================  =================================
``pad2d``           zeros + slice assignment                     numpy, cupy, torch (native pad
                                                                 via array_api_extra.pad)
``windows``         stack of k*k strided slices (a copy)         numpy, cupy (as_strided view),
                                                                 torch (Tensor.unfold view)
``add_windows``     k*k in-place slice-adds (scatter-add)        torch (F.fold when overlapping)
``uniform``         host NumPy draw, then transfer               torch, cupy (device generator)
==================  ===========================================  =================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import array_api_extra as xpx
import numpy as np
from array_api_compat import array_namespace, device

from .backend import device_scope

__all__ = ["add_windows", "col2im", "fast_path_kind", "im2col", "offset_slices", "out_size",
           "pad2d", "uniform", "windows"]

Array = Any


def fast_path_kind(xp: Any) -> str:
    """'numpy', 'cupy', 'torch' or 'generic': which fast-path table applies to namespace xp."""
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    return "generic"


def _dispatch(table: dict[str, Callable], fallback: Callable, xp: Any, generic: bool) -> Callable:
    return fallback if generic else table.get(fast_path_kind(xp), fallback)


def out_size(size: int, k: int, stride: int, pad: int = 0) -> int:
    """Output length of a sliding window: floor((size + 2*pad - k) / stride) + 1."""
    return (size + 2 * pad - k) // stride + 1


def offset_slices(kh: int, kw: int, stride: int, oh: int, ow: int,
                  start: tuple[int, int] = (0, 0)):
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
def _pad2d_generic(xp, x, pad, value):
    n, c, h, w = x.shape
    with device_scope(device(x)):  # CuPy: array-api-compat drops device= here
        out = xp.full((n, c, h + 2 * pad, w + 2 * pad), value, dtype=x.dtype,
                      device=device(x))
    out[:, :, pad:pad + h, pad:pad + w] = x
    return out


def _pad2d_native(xp, x, pad, value):
    # array-api-extra's pad hands constant padding to the library's own pad where one exists
    return xpx.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value, xp=xp)


_PAD = {"numpy": _pad2d_native, "cupy": _pad2d_native, "torch": _pad2d_native}


def pad2d(x: Array, pad: int, value: float = 0.0, *, xp: Any = None,
          generic: bool = False) -> Array:
    """Pad the last two axes of an NCHW array by ``pad`` on every side with ``value``."""
    if pad == 0:
        return x
    xp = xp or array_namespace(x)
    return _dispatch(_PAD, _pad2d_generic, xp, generic)(xp, x, pad, value)


# --------------------------------------------------------------------------------- windows
def _windows_generic(xp, x, kh, kw, stride):
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride), out_size(w, kw, stride)
    parts = [x[index] for _, _, index in offset_slices(kh, kw, stride, oh, ow)]
    stacked = xp.stack(parts, axis=-1)  # (N, C, OH, OW, kh*kw)
    return xp.reshape(stacked, (n, c, oh, ow, kh, kw))


def _windows_strided(xp, x, kh, kw, stride):
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride), out_size(w, kw, stride)
    sn, sc, sh, sw = x.strides
    shape, strides = (n, c, oh, ow, kh, kw), (sn, sc, sh * stride, sw * stride, sh, sw)
    if fast_path_kind(xp) == "numpy":
        return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)
    import cupy  # CuPy arrays have no read-only flag: a writable view, see windows()
    return cupy.lib.stride_tricks.as_strided(x, shape, strides)


def _windows_torch(xp, x, kh, kw, stride):
    return x.unfold(2, kh, stride).unfold(3, kw, stride)


_WINDOWS = {"numpy": _windows_strided, "cupy": _windows_strided, "torch": _windows_torch}


def windows(x: Array, kh: int, kw: int, stride: int = 1, *, xp: Any = None,
            generic: bool = False) -> Array:
    """All kh x kw windows of an NCHW array, shape (N, C, OH, OW, kh, kw).

    The fast paths return a view (no copy): read-only on NumPy (``writeable=False``); CuPy and
    torch have no read-only arrays, so there the view is writable but must be treated as
    read-only (a write lands in ``x`` and in every overlapping window). The fallback returns a
    copy. xpnet only ever reads it (im2col copies it once).
    """
    xp = xp or array_namespace(x)
    return _dispatch(_WINDOWS, _windows_generic, xp, generic)(xp, x, kh, kw, stride)


# ----------------------------------------------------------------------------- add_windows
def _add_windows_generic(xp, img, patches, stride, start):
    _, _, oh, ow, kh, kw = patches.shape
    for i, j, index in offset_slices(kh, kw, stride, oh, ow, start):
        img[index] += patches[:, :, :, :, i, j]
    return img


def _add_windows_torch(xp, img, patches, stride, start):
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
                start: tuple[int, int] = (0, 0), xp: Any = None, generic: bool = False) -> Array:
    """Scatter-add: add window patches (N, C, OH, OW, kh, kw) into ``img`` (N, C, H, W) in place,
    the first window at row, column ``start``.

    The adjoint of :func:`windows`; col2im and the pooling backward passes are built on it.
    Returns ``img``.
    """
    xp = xp or array_namespace(img)
    fn = _dispatch(_ADD_WINDOWS, _add_windows_generic, xp, generic)
    return fn(xp, img, patches, stride, start)


# ------------------------------------------------------------------------- im2col / col2im
# im2col's (kh*kw*C, N*OH*OW) matrix, seen as 8 axes: its rows (kh, kw, C) and its columns in
# "pool-blocked" order (P, P, N, A, B), where output pixel (oh, ow) = (P*a + di, P*b + dj). With
# pool=1 that is the plain (N, OH, OW) order; with pool=P the P*P offsets of every P x P pooling
# window sit in P*P contiguous column blocks, so a following max-pool runs on contiguous memory.
_COLS_FROM_WINDOWS = (6, 7, 1, 3, 5, 0, 2, 4)  # (N, C, A, P, B, P, kh, kw) -> column order


def _blocked_windows(xp, win, pool):
    n, c, oh, ow, kh, kw = win.shape
    a, b = oh // pool, ow // pool  # outputs a floor-mode pool would drop are never computed
    win = win[:, :, :a * pool, :b * pool, ...]
    return xp.permute_dims(xp.reshape(win, (n, c, a, pool, b, pool, kh, kw)), _COLS_FROM_WINDOWS)


def _im2col_generic(xp, win, pool, ones_row):
    blocked = _blocked_windows(xp, win, pool)
    rows = blocked.shape[0] * blocked.shape[1] * blocked.shape[2]
    cols = xp.reshape(blocked, (rows, -1))
    if not ones_row:
        return cols
    with device_scope(device(cols)):
        ones = xp.ones((1, cols.shape[1]), dtype=cols.dtype, device=device(cols))
    return xp.concat([cols, ones], axis=0)


def _im2col_copy_into(xp, win, pool, ones_row):
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
           pool: int = 1, xp: Any = None, generic: bool = False) -> Array:
    """Unfold an NCHW array into a (kh*kw*C, N*OH*OW) matrix: one column per output pixel.

    Rows are ordered (kernel row, kernel column, channel), so a (F, C, kh, kw) weight must be
    permuted to (F, kh, kw, C) before the matmul. This layout makes the single copy run over
    long contiguous rows, and lets ``W @ cols`` give a (F, N*OH*OW) result whose NCHW view
    is channel-major: the next convolution's im2col then reads contiguous memory.
    With ``ones_row`` a last row of ones is appended, so a bias column in W rides along in the
    same matmul (and its gradient comes out of the weight-gradient matmul).
    With ``pool=P`` the columns come in pool-blocked order (P, P, N, OH//P, OW//P) for a
    following P x P max-pool with stride P: see :class:`xpnet.conv.ConvMaxPool2d`. Output
    rows or columns that such a pool would drop (OH or OW not a multiple of P) are left out.
    """
    xp = xp or array_namespace(x)
    win = windows(pad2d(x, pad, xp=xp, generic=generic), kh, kw, stride, xp=xp, generic=generic)
    return _dispatch(_IM2COL, _im2col_generic, xp, generic)(xp, win, pool, ones_row)


def col2im(cols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int = 1,
           pad: int = 0, *, pool: int = 1, xp: Any = None, generic: bool = False) -> Array:
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
            add_windows(img, patches, stride * pool, start=(di * stride, dj * stride), xp=xp,
                        generic=generic)
    return img[:, :, pad:pad + h, pad:pad + w] if pad else img


# --------------------------------------------------------------------------------- uniform
def _uniform_host(xp, seed, shape, dtype, device):
    draw = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return xp.asarray(draw, dtype=dtype, device=device)


_TORCH_GENERATORS: dict[Any, Any] = {}


def _uniform_torch(xp, seed, shape, dtype, device):
    import torch
    gen = _TORCH_GENERATORS.get(device)
    if gen is None:
        gen = _TORCH_GENERATORS[device] = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=dtype, device=device)


_CUPY_STATES: dict[Any, Any] = {}


def _uniform_cupy(xp, seed, shape, dtype, device):
    import cupy
    with device:
        state = _CUPY_STATES.get(device.id)
        if state is None:
            # Philox4x32-10 is counter-based: a new seed is a new key, set on the host. CuPy's
            # default XORWOW re-runs its state set-up kernel after every seed().
            state = _CUPY_STATES[device.id] = cupy.random.RandomState(
                seed, method=cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        state.seed(seed)
        if np.dtype(dtype).char in "fd":
            return state.random_sample(shape, dtype=dtype)
        # cuRAND draws float32/float64 only (random_sample raises TypeError for float16)
        return state.random_sample(shape, dtype=cupy.float32).astype(dtype)


_UNIFORM = {"torch": _uniform_torch, "cupy": _uniform_cupy}


def uniform(seed: int, shape: tuple[int, ...], dtype: Any, *, xp: Any, device: Any,
            generic: bool = False) -> Array:
    """Uniform [0, 1) numbers of ``shape`` drawn on ``device`` from an integer seed.

    Reproducible: the same seed gives the same numbers on the same backend. The fast paths draw
    on the device (no host transfer); the fallback draws on the host with NumPy.
    """
    return _dispatch(_UNIFORM, _uniform_host, xp, generic)(xp, seed, tuple(shape), dtype, device)
