"""The ops hook: every fast path against the portable fallback and a direct loop reference."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from conftest import dev, fallback, fast_paths, to_np

from xpnet import ops, threads

# (shape, kh, kw, stride, pad): overlapping (stride < k), exact tiling, gaps (stride > k)
CASES = [
    pytest.param((2, 3, 7, 7), 3, 3, 1, 0, id="k3s1p0-overlap"),
    pytest.param((2, 3, 7, 7), 3, 3, 2, 1, id="k3s2p1-overlap"),
    pytest.param((1, 2, 8, 8), 4, 4, 2, 1, id="k4s2p1-overlap"),
    pytest.param((1, 2, 6, 6), 2, 2, 2, 0, id="k2s2p0-tiling"),
    pytest.param((1, 2, 7, 5), 2, 2, 3, 0, id="k2s3p0-gaps"),
    pytest.param((2, 1, 5, 6), 3, 3, 1, 2, id="k3s1p2-overlap"),
    pytest.param((1, 3, 5, 6), 2, 3, 1, 1, id="k2x3s1p1-rect"),
    pytest.param((1, 1, 4, 4), 1, 1, 1, 0, id="k1s1p0"),
]

EXPECTED_KIND = {"numpy": "numpy", "torch": "torch", "cupy": "cupy",
                 "array_api_strict": "generic"}


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------- loop references
def _ref_pad(x, pad, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)


def _ref_windows(x, kh, kw, s):
    n, c, h, w = x.shape
    oh, ow = (h - kh) // s + 1, (w - kw) // s + 1
    out = np.zeros((n, c, oh, ow, kh, kw), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    out[:, :, i, j, a, b] = x[:, :, i * s + a, j * s + b]
    return out


def _ref_add_windows(img, patches, s):
    img = img.copy()
    _, _, oh, ow, kh, kw = patches.shape
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    img[:, :, i * s + a, j * s + b] += patches[:, :, i, j, a, b]
    return img


def _ref_im2col(x, kh, kw, s, pad, pool=1):
    """(kh*kw*C, N*OH*OW): rows ordered (kernel row, kernel column, channel), one column per
    output pixel ordered (n, oh, ow), as documented in xpnet.ops.im2col; with ``pool`` the
    columns are ordered (di, dj, n, a, b) for output pixel (pool*a + di, pool*b + dj), and
    pixels a floor-mode pool drops are left out."""
    xpad = _ref_pad(x, pad)
    n, c = x.shape[:2]
    oh, ow = (xpad.shape[2] - kh) // s + 1, (xpad.shape[3] - kw) // s + 1
    na, nb = oh // pool, ow // pool
    cols = np.zeros((kh * kw * c, n * na * nb * pool * pool), dtype=x.dtype)
    for p in range(kh):
        for q in range(kw):
            for ch in range(c):
                for col, (b, i, j) in _pixels(n, na, nb, pool):
                    cols[(p * kw + q) * c + ch, col] = xpad[b, ch, i * s + p, j * s + q]
    return cols


def _pixels(n, na, nb, pool):
    """(column, (image, output row, output column)) in im2col's column order."""
    col = 0
    for di in range(pool):
        for dj in range(pool):
            for b in range(n):
                for a in range(na):
                    for bb in range(nb):
                        yield col, (b, pool * a + di, pool * bb + dj)
                        col += 1


def _ref_col2im(cols, shape, kh, kw, s, pad, pool=1):
    n, c, h, w = shape
    oh, ow = (h + 2 * pad - kh) // s + 1, (w + 2 * pad - kw) // s + 1
    img = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    for p in range(kh):
        for q in range(kw):
            for ch in range(c):
                for col, (b, i, j) in _pixels(n, oh // pool, ow // pool, pool):
                    img[b, ch, i * s + p, j * s + q] += cols[(p * kw + q) * c + ch, col]
    return img[:, :, pad:pad + h, pad:pad + w]


def _cols_shape(shape, kh, kw, s, pad, pool=1):
    n, c, h, w = shape
    oh, ow = ops.out_size(h, kh, s, pad), ops.out_size(w, kw, s, pad)
    return (kh * kw * c, n * (oh // pool) * (ow // pool) * pool * pool)


# ---------------------------------------------------------------------- dispatch
def test_fast_path_kind_names_the_table(backend):
    assert ops.fast_path_kind(backend.xp) == EXPECTED_KIND[backend.name]
    x = dev(np.ones((1, 1, 2, 2)))
    assert ops.fast_path_kind(array_api_compat.array_namespace(x)) == EXPECTED_KIND[backend.name]


def test_fast_windows_are_views_and_generic_ones_copies(backend):
    """Proves the dispatch really takes the fast path where one exists."""
    host = _rand((1, 2, 5, 5))
    x = dev(host)
    fast, generic = ops.windows(x, 2, 2, 1), fallback(ops.windows, x, 2, 2, 1)
    if backend.name == "numpy":
        assert np.shares_memory(fast, x) and not fast.flags.writeable
        assert not np.shares_memory(generic, x)
    elif backend.name == "torch":
        assert fast.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        assert generic.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    np.testing.assert_array_equal(to_np(fast), to_np(generic))


@pytest.mark.parametrize("size,k,stride,pad", [(28, 5, 1, 0), (28, 3, 1, 1), (7, 2, 2, 0),
                                               (7, 3, 2, 1), (5, 5, 1, 0), (6, 2, 3, 0)])
def test_out_size(size, k, stride, pad):
    assert ops.out_size(size, k, stride, pad) == len(range(0, size + 2 * pad - k + 1, stride))


# ---------------------------------------------------------------------- pad2d
@pytest.mark.parametrize("pad,value", [(1, 0.0), (2, -np.inf), (3, 2.5)])
def test_pad2d_fast_matches_generic_and_reference(backend, pad, value):
    host = _rand((2, 3, 4, 5))
    x = dev(host)
    fast = ops.pad2d(x, pad, value)
    generic = fallback(ops.pad2d, x, pad, value)
    assert fast.dtype == x.dtype and generic.dtype == x.dtype
    assert array_api_compat.device(fast) == backend.device
    np.testing.assert_array_equal(to_np(fast), _ref_pad(host, pad, value))
    np.testing.assert_array_equal(to_np(generic), _ref_pad(host, pad, value))


def test_pad2d_zero_is_a_no_op(backend):
    x = dev(_rand((1, 1, 3, 3)))
    assert ops.pad2d(x, 0) is x
    assert fallback(ops.pad2d, x, 0) is x


# ---------------------------------------------------------------------- windows
@pytest.mark.parametrize("shape,kh,kw,stride,pad", CASES)
def test_windows_fast_matches_generic_and_reference(backend, shape, kh, kw, stride, pad):
    host = _rand(shape)
    x = dev(host)
    expected = _ref_windows(host, kh, kw, stride)
    fast = ops.windows(x, kh, kw, stride)
    generic = fallback(ops.windows, x, kh, kw, stride)
    assert tuple(fast.shape) == tuple(generic.shape) == expected.shape
    np.testing.assert_array_equal(to_np(fast), expected)
    np.testing.assert_array_equal(to_np(generic), expected)


def test_windows_of_a_non_contiguous_input(backend):
    host = _rand((2, 3, 6, 6))
    x = backend.xp.permute_dims(dev(host), (1, 0, 2, 3))  # a strided view on numpy / torch
    expected = _ref_windows(host.transpose(1, 0, 2, 3), 3, 3, 1)
    np.testing.assert_array_equal(to_np(ops.windows(x, 3, 3, 1)), expected)
    np.testing.assert_array_equal(to_np(fallback(ops.windows, x, 3, 3, 1)), expected)


# ---------------------------------------------------------------------- add_windows
@pytest.mark.parametrize("shape,kh,kw,stride,pad", CASES)
def test_add_windows_fast_matches_generic_and_reference(backend, shape, kh, kw, stride, pad):
    xp = backend.xp
    n, c, h, w = shape
    oh, ow = ops.out_size(h, kh, stride), ops.out_size(w, kw, stride)
    patches_host = _rand((n, c, oh, ow, kh, kw), seed=1)
    start = _rand(shape, seed=2)  # add into a non-zero image: the op accumulates
    expected = _ref_add_windows(start, patches_host, stride)
    results = []
    for generic in (False, True):
        img = dev(start)
        with fast_paths(not generic):
            out = ops.add_windows(img, dev(patches_host), stride)
        assert out is img  # in place
        assert out.dtype == xp.float64
        results.append(to_np(out))
    np.testing.assert_allclose(results[0], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[1], expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- im2col / col2im
POOLS = pytest.mark.parametrize("pool", [1, 2], ids=["pool1", "pool2"])


@POOLS
@pytest.mark.parametrize("shape,kh,kw,stride,pad", CASES)
def test_im2col_fast_matches_generic_and_loop_reference(backend, shape, kh, kw, stride, pad,
                                                        pool):
    host = _rand(shape)
    x = dev(host)
    expected = _ref_im2col(host, kh, kw, stride, pad, pool)
    assert expected.shape == _cols_shape(shape, kh, kw, stride, pad, pool)
    fast = ops.im2col(x, kh, kw, stride, pad, pool=pool)
    generic = fallback(ops.im2col, x, kh, kw, stride, pad, pool=pool)
    np.testing.assert_array_equal(to_np(fast), expected)
    np.testing.assert_array_equal(to_np(generic), expected)


@POOLS
@pytest.mark.parametrize("shape,kh,kw,stride,pad", CASES)
def test_col2im_fast_matches_generic_and_loop_reference(backend, shape, kh, kw, stride, pad,
                                                        pool):
    cols_host = _rand(_cols_shape(shape, kh, kw, stride, pad, pool), seed=3)
    cols = dev(cols_host)
    expected = _ref_col2im(cols_host, shape, kh, kw, stride, pad, pool)
    fast = ops.col2im(cols, shape, kh, kw, stride, pad, pool=pool)
    generic = fallback(ops.col2im, cols, shape, kh, kw, stride, pad, pool=pool)
    assert tuple(fast.shape) == shape and tuple(generic.shape) == shape
    np.testing.assert_allclose(to_np(fast), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_np(generic), expected, rtol=1e-12, atol=1e-12)


@POOLS
@pytest.mark.parametrize("generic", [False, True], ids=["fast", "generic"])
@pytest.mark.parametrize("shape,kh,kw,stride,pad", CASES)
def test_col2im_is_the_adjoint_of_im2col(backend, shape, kh, kw, stride, pad, generic, pool):
    """<col2im(y), x> == <y, im2col(x)> in float64."""
    xp = backend.xp
    x_host = _rand(shape, seed=4)
    y_host = _rand(_cols_shape(shape, kh, kw, stride, pad, pool), seed=5)
    x, y = dev(x_host), dev(y_host)
    assert x.dtype == xp.float64
    with fast_paths(not generic):
        lhs = float(xp.sum(ops.col2im(y, shape, kh, kw, stride, pad, pool=pool) * x))
        rhs = float(xp.sum(y * ops.im2col(x, kh, kw, stride, pad, pool=pool)))
    assert abs(lhs) > 1e-3  # not a vacuous 0 == 0
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_im2col_keeps_dtype_and_device(backend):
    xp = backend.xp
    x = dev(_rand((1, 2, 5, 5)).astype(np.float32))
    cols = ops.im2col(x, 3, 3, 1, 1)
    assert cols.dtype == xp.float32
    assert array_api_compat.device(cols) == backend.device
    img = ops.col2im(cols, (1, 2, 5, 5), 3, 3, 1, 1)
    assert img.dtype == xp.float32
    assert array_api_compat.device(img) == backend.device


# ------------------------------------------------------------- grid convolution (stride 1)
GRID_CASES = [((2, 3, 5, 6), 3, 1), ((1, 2, 4, 4), 2, 0), ((2, 1, 3, 5), 1, 0),
              ((1, 2, 4, 3), 3, 2)]


def _grid_ref(x, k, p):
    """Loop reference: flat channel-major padded grid with a zero tail, and its columns."""
    n, c, h, w = x.shape
    hg, wg = h + 2 * p, w + 2 * p
    g = np.zeros((c, n, hg, wg))
    g[:, :, p:p + h, p:p + w] = x.transpose(1, 0, 2, 3)
    flat = np.concatenate([g.reshape(c, -1), np.zeros((c, (k - 1) * (wg + 1)))], axis=1)
    length = n * hg * wg
    cols = np.zeros((k * k * c, length))
    for i in range(k):
        for j in range(k):
            for ch in range(c):
                cols[(i * k + j) * c + ch] = flat[ch, i * wg + j:i * wg + j + length]
    return flat, cols, wg, length


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "workspace"])
@pytest.mark.parametrize("shape,k,p", GRID_CASES)
def test_to_grid_and_grid_cols_fast_match_generic_and_reference(backend, shape, k, p, reuse):
    ws = threads.Workspace() if reuse else None
    for seed in range(2):  # a reused workspace must hold the second input, borders still zero
        host = _rand(shape, seed=seed)
        flat_ref, cols_ref, wg, length = _grid_ref(host, k, p)
        hw, tail = (shape[2] + 2 * p, wg), (k - 1) * (wg + 1)
        x = dev(host)
        flat = ops.to_grid(x, hw, (p, p), tail, ws=ws, key="x")
        generic = fallback(ops.to_grid, x, hw, (p, p), tail)
        np.testing.assert_array_equal(to_np(flat), flat_ref)
        np.testing.assert_array_equal(to_np(generic), flat_ref)
        for ones_row in (False, True):
            expected = np.concatenate([cols_ref, np.ones((1, length))]) if ones_row else cols_ref
            fast = ops.grid_cols(flat, k, wg, length, ones_row=ones_row, ws=ws, key="cols")
            gen = fallback(ops.grid_cols, flat, k, wg, length, ones_row=ones_row)
            np.testing.assert_array_equal(to_np(fast), expected)
            np.testing.assert_array_equal(to_np(gen), expected)


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "workspace"])
def test_to_grid_mask_applies_on_the_way(backend, reuse):
    """A ReLU epilogue's backward: x where the boolean mask is True, else 0; fast path and
    fallback against the reference, a reused buffer included."""
    shape, k, p = (2, 3, 5, 6), 3, 1
    ws = threads.Workspace() if reuse else None
    for seed in range(2):
        host = _rand(shape, seed=seed)
        mask = _rand(shape, seed=seed + 7) > 0
        flat_ref, _, wg, _ = _grid_ref(np.where(mask, host, 0.0), k, p)
        hw, tail = (shape[2] + 2 * p, wg), (k - 1) * (wg + 1)
        fast = ops.to_grid(dev(host), hw, (p, p), tail, ws=ws, key="d", mask=dev(mask))
        generic = fallback(ops.to_grid, dev(host), hw, (p, p), tail, mask=dev(mask))
        np.testing.assert_array_equal(to_np(fast), flat_ref)
        np.testing.assert_array_equal(to_np(generic), flat_ref)


def test_relu_in_place_fast_matches_generic(backend):
    host = _rand((3, 4, 5))
    host[0, 0, :2] = 0.0
    expected = np.maximum(host, 0.0)
    fast_in = dev(host)
    fast = ops.relu_(fast_in)
    generic_in = dev(host)
    generic = fallback(ops.relu_, generic_in)
    np.testing.assert_array_equal(to_np(fast), expected)
    np.testing.assert_array_equal(to_np(generic), expected)
    np.testing.assert_array_equal(to_np(generic_in), host)  # the fallback writes a new array
    if ops.fast_path_kind(array_api_compat.array_namespace(fast_in)) != "generic":
        np.testing.assert_array_equal(to_np(fast_in), expected)  # in place


@pytest.mark.parametrize("threading", ["blas", "tasks"])
@pytest.mark.parametrize("chunk_bytes", [None, 64], ids=["whole", "chunked"])
@pytest.mark.parametrize("shape,k,p", [*GRID_CASES, ((2, 3, 16, 16), 3, 1), ((2, 5, 9, 7), 5, 2),
                                       ((2, 6, 8, 8), 3, 1)])
@pytest.mark.parametrize("form", ["rows", "shifts"])
def test_grid_matmul_fast_matches_generic(backend, shape, k, p, chunk_bytes, threading, form,
                                          monkeypatch):
    # the row-stacked form (k column shifts copied) or all k*k shifts, whatever the channels
    monkeypatch.setattr(ops, "ROW_STACK_MIN_CHANNELS", 1 if form == "rows" else 10**9)
    monkeypatch.setenv("XPNET_GRID_THREADING", threading)
    if chunk_bytes:
        monkeypatch.setattr(ops, "GRID_CHUNK_BYTES", chunk_bytes)
    host = _rand(shape)
    _, cols_ref, wg, length = _grid_ref(host, k, p)
    if chunk_bytes and length > 512:  # the long case really is split (blocks >= 256 columns)
        assert len(ops._grid_chunks(cols_ref.shape[0] + 1, length, 8, 2)) > 1
    flat = ops.to_grid(dev(host), (shape[2] + 2 * p, wg), (p, p), (k - 1) * (wg + 1))
    g_host = _rand((4, length), seed=2)
    for ones_row in (True, False):  # with a bias column (forward, weight gradient) or not
        cols1 = np.concatenate([cols_ref, np.ones((1, length))]) if ones_row else cols_ref
        w_host = _rand((4, cols1.shape[0]), seed=1)
        for generic in (False, True):
            with fast_paths(not generic):
                fwd = ops.grid_matmul(dev(w_host), flat, k, wg, length, ones_row=ones_row)
                wgrad = ops.grid_matmul(dev(g_host), flat, k, wg, length, ones_row=ones_row,
                                        transpose=True)
            np.testing.assert_allclose(to_np(fwd), w_host @ cols1, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(to_np(wgrad), g_host @ cols1.T, rtol=1e-12,
                                       atol=1e-12)


def test_grid_chunks_cover_the_columns_once_and_respect_the_minimum():
    for length, min_step in ((1000, 256), (10**6, 5000), (300, 256), (1, 256)):
        chunks = ops._grid_chunks(10, length, 4, 2, min_step=min_step)
        assert chunks[0][0] == 0 and chunks[-1][1] == length
        assert all(b == c for (_, b), (c, _) in zip(chunks, chunks[1:]))
        assert all(b - a >= min_step for a, b in chunks[:-1])


def test_grid_threading_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.delenv("XPNET_GRID_THREADING", raising=False)
    assert ops.grid_threading() == "blas"
    monkeypatch.setenv("XPNET_GRID_THREADING", "tasks")
    assert ops.grid_threading() == "tasks"
    monkeypatch.setenv("XPNET_GRID_THREADING", "fast")
    with pytest.raises(ValueError, match="XPNET_GRID_THREADING='fast': expected 'blas' or "
                                         "'tasks'"):
        ops.grid_threading()


def _ref_adam(p, g, m, v, lr, b1, b2, eps, step):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr / (1 - b1 ** step) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** step) + eps)
    return p, m, v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 2, 2)], ids=["1d", "2d", "4d"])
def test_adam_update_fast_matches_generic_and_reference(backend, dtype, shape):
    rng = np.random.default_rng(3)
    p0, g0 = rng.standard_normal(shape), rng.standard_normal(shape)
    m0, v0 = rng.standard_normal(shape), rng.random(shape)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    ref = (p0, m0, v0)
    results = {}
    for generic in (False, True):
        p, g, m, v = (dev(a, dtype=dtype) for a in (p0, g0, m0, v0))
        with fast_paths(not generic):
            for step in (1, 2, 3):  # the bias correction changes with the step
                ops.adam_update(p, g, m, v, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8,
                                step=step)
        assert p.dtype == g.dtype and m.dtype == g.dtype
        results[generic] = [to_np(a) for a in (p, m, v)]
    for step in (1, 2, 3):
        ref = _ref_adam(*ref[:1], g0, *ref[1:], 0.01, 0.9, 0.99, 1e-8, step)
    for got in results.values():
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, **tol)


def test_adam_update_takes_the_fallback_for_a_non_contiguous_gradient(backend):
    """A transposed gradient (a view) gives the same update as its contiguous copy."""
    rng = np.random.default_rng(4)
    g0 = rng.standard_normal((3, 4))
    out = []
    for g in (dev(g0.T.copy()), dev(g0).T):
        p, m, v = dev(np.ones((4, 3))), dev(np.zeros((4, 3))), dev(np.zeros((4, 3)))
        ops.adam_update(p, g, m, v, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
        out.append(to_np(p))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-12)
