"""Conv2d and ConvMaxPool2d (xpnet/layers/conv.py): gradient checks, loop references, every
path (native, grid, im2col) against the others, and the fused conv+pool against the two layers
it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_gradients_close, dev, to_np
from layer_refs import X_SHAPE, assert_param_grads_without_input_grad, rand, ref_conv

import xpnet
from xpnet.gradcheck import check_module

# (kernel, stride, padding)
CONV_CASES = [
    pytest.param(3, 1, 0, id="k3s1p0"),
    pytest.param(3, 1, 1, id="k3s1p1"),
    pytest.param(3, 2, 1, id="k3s2p1"),
    pytest.param(2, 2, 0, id="k2s2p0"),
    pytest.param(2, 1, 2, id="k2s1p2"),
    pytest.param(1, 1, 0, id="k1s1p0"),
]


def _conv(k, s, p, dtype="float64", seed=1, path="auto"):
    layer = xpnet.Conv2d(2, 3, k, stride=s, padding=p, dtype=dtype, rng=xpnet.Generator(seed))
    layer.b.data = dev(rand(3, seed=seed + 10), dtype=dtype)
    layer.path = path
    return layer


# Conv2d's formulations: "grid" (stride 1 over the padded grid, blocked column copies),
# "im2col" (strided im2col, col2im or a transposed convolution for the input gradient) and
# "auto" (the backend's own convolution where it has one: torch; else grid or im2col)
PATHS = pytest.mark.parametrize("path", ["auto", "grid", "im2col"])


def _ran(layer, xp):
    """The name of the path a forward of ``layer`` on ``xp`` takes."""
    return layer._select_path(xp).name


def _skip_grid_for_strides(path, k, s, p):
    if path == "grid" and (s != 1 or p > k - 1):
        pytest.skip("the grid formulation is stride 1 with padding <= k - 1 only (path='grid' "
                    "falls back to im2col, which the 'im2col' cases test)")


@pytest.fixture(params=[None, 2048], ids=["whole", "chunked"])
def grid_chunks(request, monkeypatch):
    """Whole column blocks, or (NumPy) blocks of a few columns (the 9x7 case splits in two;
    the smaller ones stay one block, as blocks never go below 256 columns)."""
    from xpnet import ops
    if request.param:
        monkeypatch.setattr(ops, "GRID_CHUNK_BYTES", request.param)


# ---------------------------------------------------------------------- Conv2d
@PATHS
@pytest.mark.parametrize("k,s,p", CONV_CASES)
def test_conv2d_gradcheck(backend, k, s, p, path):
    _skip_grid_for_strides(path, k, s, p)
    results = check_module(_conv(k, s, p, path=path), dev(rand(X_SHAPE)))
    assert_gradients_close(results, {"x", "W", "b"})


@PATHS
@pytest.mark.parametrize("k,s,p", CONV_CASES)
def test_conv2d_forward_matches_loop_reference(backend, k, s, p, path):
    _skip_grid_for_strides(path, k, s, p)
    layer = _conv(k, s, p, path=path)
    x = rand(X_SHAPE)
    y = layer(dev(x))
    expected = ref_conv(x, to_np(layer.W.data), to_np(layer.b.data), s, p)
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-10, atol=1e-12)


def test_conv2d_parameters_and_shapes(backend):
    layer = xpnet.Conv2d(3, 5, 3, stride=2, padding=1)
    assert layer.W.shape == (5, 3, 3, 3) and layer.b.shape == (5,)
    assert set(layer.parameters()) == {"W", "b"}
    y = layer(dev(np.zeros((4, 3, 7, 8), dtype=np.float32)))
    assert tuple(y.shape) == (4, 5, 4, 4)
    assert "3 -> 5, k=3, stride=2, padding=1" in repr(layer)


def test_conv2d_first_layer_without_input_grad(backend):
    rng = xpnet.Generator(2)
    model = xpnet.Sequential(xpnet.Conv2d(2, 3, 3, padding=1, dtype="float64", rng=rng),
                             xpnet.ReLU(), xpnet.Flatten(),
                             xpnet.Linear(3 * 5 * 6, 2, dtype="float64", rng=rng))
    x, dout = dev(rand(X_SHAPE)), dev(rand((2, 2), seed=1))
    model(x)
    model.backward(dout)
    full = {n: to_np(p.grad).copy() for n, p in model.parameters().items()}
    model.zero_grad()
    model(x)
    assert model.backward(dout, input_grad=False) is None
    for n, p in model.parameters().items():
        np.testing.assert_allclose(to_np(p.grad), full[n], rtol=1e-13, atol=1e-15, err_msg=n)


@pytest.mark.parametrize("shape,k,p", [((3, 2, 9, 7), 3, 1), ((2, 2, 6, 6), 3, 2),
                                       ((2, 2, 6, 5), 3, 0), ((2, 2, 5, 5), 1, 0),
                                       ((1, 2, 7, 8), 2, 1)])
def test_conv2d_grid_equals_im2col_forward_and_backward(backend, shape, k, p, grid_chunks):
    """The fast formulation against the plain one: same output, W/b gradients and input
    gradient, over two steps (reused workspaces must not leak one step into the next)."""
    grid, ref = (xpnet.Conv2d(2, 3, k, padding=p, dtype="float64", rng=xpnet.Generator(5))
                 for _ in range(2))
    grid.path, ref.path = "grid", "im2col"
    for step in range(2):
        x = dev(rand(shape, seed=step))
        y_grid, y_ref = grid(x), ref(x)
        # two formulations, not one twice
        assert (_ran(grid, backend.xp), _ran(ref, backend.xp)) == ("grid", "im2col")
        np.testing.assert_allclose(to_np(y_grid), to_np(y_ref), rtol=1e-12, atol=1e-12)
        dout = dev(rand(tuple(y_ref.shape), seed=10 + step))
        dx_grid, dx_ref = grid.backward(dout), ref.backward(dout)
        np.testing.assert_allclose(to_np(dx_grid), to_np(dx_ref), rtol=1e-12, atol=1e-12)
        for name in ("W", "b"):
            np.testing.assert_allclose(to_np(getattr(grid, name).grad),
                                       to_np(getattr(ref, name).grad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", CONV_CASES + [pytest.param(3, 1, 3, id="k3s1p3")])
def test_conv2d_native_equals_grid_and_im2col(backend, k, s, p):
    """The backend's own convolution (torch) against xpnet's formulations: output, W/b
    gradients and input gradient, float64, over two steps."""
    if xpnet.ops.native_conv2d(backend.xp) is None:
        pytest.skip(f"{backend.name} has no convolution of its own: nothing to compare")
    layers = {path: _conv(k, s, p, path=path) for path in ("auto", "grid", "im2col")}
    layers["native"] = layers.pop("auto")
    for step in range(2):
        x = dev(rand((3, 2, 7, 6), seed=step))
        ys = {path: layer(x) for path, layer in layers.items()}
        assert _ran(layers["native"], backend.xp) == "native"
        assert _ran(layers["im2col"], backend.xp) == "im2col"
        dout = dev(rand(tuple(ys["im2col"].shape), seed=10 + step))
        dxs = {path: layer.backward(dout) for path, layer in layers.items()}
        for path in ("grid", "im2col"):
            np.testing.assert_allclose(to_np(ys["native"]), to_np(ys[path]), rtol=1e-12,
                                       atol=1e-12, err_msg=path)
            np.testing.assert_allclose(to_np(dxs["native"]), to_np(dxs[path]), rtol=1e-12,
                                       atol=1e-12, err_msg=path)
            for name in ("W", "b"):
                np.testing.assert_allclose(to_np(getattr(layers["native"], name).grad),
                                           to_np(getattr(layers[path], name).grad),
                                           rtol=1e-12, atol=1e-12, err_msg=f"{path} {name}")


def test_conv2d_native_keeps_nothing_in_eval_mode(backend):
    if xpnet.ops.native_conv2d(backend.xp) is None:
        pytest.skip(f"{backend.name} has no convolution of its own")
    layer = _conv(3, 1, 1)
    layer.eval()
    y = layer(dev(rand(X_SHAPE)))
    assert _ran(layer, backend.xp) == "native" and layer._calls[-1].record == (None, None)
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        layer.backward(dev(np.ones(tuple(y.shape))))


@pytest.mark.gpu
def test_conv2d_native_on_cuda_matches_float64_and_is_exact_when_asked():
    """torch on CUDA (cuDNN): float32 close to a float64 CPU reference under torch's defaults
    (TF32 allowed), within 1e-5 and bit-reproducible with allow_tf32 off and deterministic on."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    conv = xpnet.ops.native_conv2d(xpnet.backend.resolve_backend("torch").xp)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 64, 16, 16)), rng.standard_normal((64, 64, 3, 3)) * 0.05
    b = rng.standard_normal(64)
    ref = conv.forward(*(torch.tensor(a) for a in (x, w, b)), 1, 1).numpy()
    t32 = [torch.tensor(a, dtype=torch.float32, device="cuda") for a in (x, w, b)]
    out = conv.forward(*t32, 1, 1)
    np.testing.assert_allclose(out.cpu().double().numpy(), ref, rtol=5e-3, atol=5e-3)
    c = torch.backends.cudnn
    saved = c.allow_tf32, c.deterministic
    c.allow_tf32, c.deterministic = False, True
    try:
        out = conv.forward(*t32, 1, 1)
        np.testing.assert_allclose(out.cpu().double().numpy(), ref, rtol=1e-5, atol=1e-5)
        dout = torch.ones_like(out)
        grads = [conv.backward(dout, t32[0], t32[1], 1, 1, True) for _ in range(2)]
        for a, g in zip(grads[0], grads[1], strict=True):
            assert torch.equal(a, g)
    finally:
        c.allow_tf32, c.deterministic = saved


@PATHS
def test_conv2d_backward_without_input_grad(backend, path):
    _skip_grid_for_strides(path, 3, 1, 1)
    layer = _conv(3, 1, 1, path=path)
    x, dout = dev(rand(X_SHAPE)), dev(rand((2, 3, 5, 6), seed=1))
    assert_param_grads_without_input_grad(layer, x, dout, rtol=1e-13)


@PATHS
def test_conv2d_forward_saves_one_record_of_its_path_and_no_loose_attributes(backend, path):
    layer = _conv(3, 1, 1, path=path)
    before = set(vars(layer))
    layer(dev(rand(X_SHAPE)))
    assert set(vars(layer)) - before <= {"_calls", "_ws"}  # the record list and workspace
    (call,) = layer._calls
    record, relu_output = call.record
    assert record.path.name == _ran(layer, backend.xp) and relu_output is None


def test_conv2d_auto_path_and_bad_path(backend):
    def mode(stride, padding, k=3):
        layer = xpnet.Conv2d(2, 3, k, stride=stride, padding=padding)
        layer(dev(np.zeros((1, 2, 6, 6), dtype=np.float32)))
        return _ran(layer, backend.xp)
    if backend.name == "torch":  # torch's own convolution, whatever the geometry
        assert {mode(1, 1), mode(1, 2), mode(2, 1), mode(1, 3)} == {"native"}
    else:
        assert mode(1, 1) == "grid" and mode(1, 2) == "grid" and mode(1, 0, k=1) == "grid"
        assert mode(2, 1) == "im2col"  # stride 2
        assert mode(1, 3) == "im2col"  # padding beyond k - 1: no shared-padding grid
    layer = xpnet.Conv2d(2, 3, 3, padding=1)
    layer.path = "fast"
    with pytest.raises(ValueError, match="path must be"):
        layer(dev(np.zeros((1, 2, 4, 4), dtype=np.float32)))


# ---------------------------------------------------------------------- ConvMaxPool2d
# (kernel, stride, padding, pool): conv outputs of 5x6 (k3s1p1: odd rows a floor-mode pool
# drops), 3x3 (k3s2p1), 6x7 (k2s1p1), 7x8 (k3s1p2, pool 3 drops a row and two columns)
FUSED_CASES = [
    pytest.param(3, 1, 1, 2, id="k3s1p1-pool2"),
    pytest.param(3, 2, 1, 2, id="k3s2p1-pool2"),
    pytest.param(2, 1, 1, 2, id="k2s1p1-pool2"),
    pytest.param(3, 1, 2, 3, id="k3s1p2-pool3"),
    pytest.param(3, 1, 1, 1, id="k3s1p1-pool1"),
]


def _fused_and_book(k, s, p, pool, seed=1):
    """A ConvMaxPool2d and Sequential(Conv2d, MaxPool2d) sharing the same W and b."""
    fused = xpnet.ConvMaxPool2d(2, 3, k, stride=s, padding=p, pool=pool, dtype="float64",
                                rng=xpnet.Generator(seed))
    fused.b.data = dev(rand(3, seed=seed + 10))
    conv = xpnet.Conv2d(2, 3, k, stride=s, padding=p, dtype="float64")
    conv.W, conv.b = fused.W, fused.b
    return fused, xpnet.Sequential(conv, xpnet.MaxPool2d(pool))


@pytest.mark.parametrize("k,s,p,pool", FUSED_CASES)
def test_conv_maxpool2d_gradcheck(backend, k, s, p, pool):
    fused, _ = _fused_and_book(k, s, p, pool)
    results = check_module(fused, dev(rand(X_SHAPE)))
    assert_gradients_close(results, {"x", "W", "b"})


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("k,s,p,pool", FUSED_CASES)
def test_conv_maxpool2d_equals_conv2d_then_maxpool2d(backend, k, s, p, pool, ties):
    """Outputs and all gradients equal the unfused layers, ties going to the first maximum."""
    fused, book = _fused_and_book(k, s, p, pool)
    if ties:  # integer inputs and weights: many exactly equal conv outputs in a window
        x = np.random.default_rng(3).integers(0, 2, X_SHAPE).astype(np.float64)
        fused.W.data = dev(np.random.default_rng(4).integers(-1, 2, fused.W.shape) * 1.0)
        fused.b.data = dev(np.zeros(3))
    else:
        x = rand(X_SHAPE)
    y = fused(dev(x))
    np.testing.assert_allclose(to_np(y), to_np(book(dev(x))), rtol=1e-13, atol=1e-13)
    dout = dev(rand(tuple(y.shape), seed=6))
    book(dev(x))
    dx_book = to_np(book.backward(dout))
    grads_book = {n: to_np(q.grad).copy() for n, q in fused.parameters().items()}
    fused(dev(x))
    np.testing.assert_allclose(to_np(fused.backward(dout)), dx_book, rtol=1e-12, atol=1e-12)
    for n, q in fused.parameters().items():
        np.testing.assert_allclose(to_np(q.grad), grads_book[n], rtol=1e-12, atol=1e-12,
                                   err_msg=n)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("k,s,p,pool", FUSED_CASES)
def test_conv_maxpool2d_native_equals_fused_im2col(backend, k, s, p, pool, ties):
    """On a backend with its own convolution (torch) the fused layer runs it and pools its
    output: same outputs and gradients as the fused im2col form, ties included."""
    if xpnet.ops.native_conv2d(backend.xp) is None:
        pytest.skip(f"{backend.name} has no convolution of its own: nothing to compare")
    native, _ = _fused_and_book(k, s, p, pool)
    ref, _ = _fused_and_book(k, s, p, pool)
    ref.path = "im2col"
    x = rand(X_SHAPE)
    if ties:
        x = np.random.default_rng(3).integers(0, 2, X_SHAPE).astype(np.float64)
        for layer in (native, ref):  # exact sums: the ties are real in both
            layer.W.data = dev(np.random.default_rng(4).integers(-1, 2, layer.W.shape) * 1.0)
            layer.b.data = dev(np.zeros(3))
    for step in range(2):
        y, y_ref = native(dev(x + step)), ref(dev(x + step))
        assert (_ran(native, backend.xp), _ran(ref, backend.xp)) == ("native", "im2col")
        np.testing.assert_allclose(to_np(y), to_np(y_ref), rtol=1e-13, atol=1e-13)
        dout = dev(rand(tuple(y.shape), seed=6 + step))
        np.testing.assert_allclose(to_np(native.backward(dout)), to_np(ref.backward(dout)),
                                   rtol=1e-12, atol=1e-12)
        for n in ("W", "b"):
            np.testing.assert_allclose(to_np(getattr(native, n).grad),
                                       to_np(getattr(ref, n).grad), rtol=1e-12, atol=1e-12,
                                       err_msg=n)


def test_conv_maxpool2d_shapes_repr_and_errors(backend):
    layer = xpnet.ConvMaxPool2d(1, 4, 5, pool=2)
    assert tuple(layer(dev(np.zeros((3, 1, 28, 28), dtype=np.float32))).shape) == (3, 4, 12, 12)
    assert set(layer.parameters()) == {"W", "b"} and "pool=2" in repr(layer)
    with pytest.raises(ValueError, match="pool.*0"):
        xpnet.ConvMaxPool2d(1, 4, 3, pool=0)
    with pytest.raises(ValueError, match=r"3x3 convolution output is smaller than the 4x4"):
        xpnet.ConvMaxPool2d(1, 4, 3, pool=4)(dev(np.zeros((1, 1, 5, 5), dtype=np.float32)))
    layer.eval()
    y = layer(dev(np.zeros((1, 1, 28, 28), dtype=np.float32)))
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(y)


# ---------------------------------------------------------------------- bad input


def test_conv2d_wrong_channels_names_layer_and_both_shapes(backend):
    layer = xpnet.Conv2d(3, 4, 3)
    with pytest.raises(ValueError) as info:
        layer(dev(np.zeros((2, 1, 8, 8), dtype=np.float32)))
    msg = str(info.value)
    assert "Conv2d(3 -> 4" in msg and "(2, 1, 8, 8)" in msg and "(N, 3, H, W)" in msg


def test_conv2d_needs_a_4d_input(backend):
    with pytest.raises(ValueError, match=r"\(2, 64\).*\(N, 1, H, W\)"):
        xpnet.Conv2d(1, 4, 3)(dev(np.zeros((2, 64), dtype=np.float32)))


def test_image_smaller_than_kernel_is_refused(backend):
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        xpnet.Conv2d(1, 2, 5)(dev(np.zeros((1, 1, 3, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        xpnet.MaxPool2d(3)(dev(np.zeros((1, 1, 2, 2), dtype=np.float32)))


@pytest.mark.parametrize("make,match", [
    (lambda: xpnet.Conv2d(1, 2, 0), "kernel_size.*0"),
    (lambda: xpnet.Conv2d(0, 2, 3), "in_channels.*0"),
    (lambda: xpnet.Conv2d(1, -1, 3), "out_channels.*-1"),
    (lambda: xpnet.Conv2d(1, 2, 3, stride=0), "stride.*0"),
    (lambda: xpnet.Conv2d(1, 2, 3, padding=-1), "padding.*-1"),
], ids=["conv-k0", "conv-in0", "conv-out-neg", "conv-stride0", "conv-pad-neg"])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("c,f,k,p", [(5, 4, 3, 1), (4, 6, 5, 2), (4, 4, 3, 0)])
def test_conv2d_grid_with_channels_for_the_row_stacked_form(backend, c, f, k, p, grid_chunks):
    """>= 4 input channels (and output channels, for the input gradient): on NumPy the grid's
    products run in the row-stacked form (xpnet.ops.ROW_STACK_MIN_CHANNELS); checked against
    the loop reference and central differences, whole and in blocks."""
    layer = xpnet.Conv2d(c, f, k, padding=p, dtype="float64", rng=xpnet.Generator(4))
    layer.b.data = dev(rand(f, seed=14), dtype="float64")
    layer.path = "grid"
    x = rand((2, c, 9, 7))
    y = layer(dev(x))
    expected = ref_conv(x, to_np(layer.W.data), to_np(layer.b.data), 1, p)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-10, atol=1e-12)
    assert_gradients_close(check_module(layer, dev(x)), {"x", "W", "b"})
