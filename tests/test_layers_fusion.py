"""Sequential's reordering of commuting layers and its Conv2d + ReLU epilogue
(xpnet/layers/container.py): a ReLU followed by a MaxPool2d runs after the pool, and a Conv2d
then directly followed by a ReLU runs as ``conv.forward(x, relu=True)``. Held equal, float64,
to the layer-by-layer order on every backend: outputs exactly (to rounding for the epilogue),
the input gradient and every parameter gradient to rounding (a backend's sums may run in
another order over another memory layout), ties included."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np
from layer_refs import gradcheck, rand

import xpnet

TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def _conv_net(fuse: bool, pool: xpnet.MaxPool2d | None = None) -> xpnet.Sequential:
    rng = xpnet.Generator(7)
    net = xpnet.Sequential(
        xpnet.Conv2d(2, 3, 3, padding=1, dtype="float64", rng=rng), xpnet.ReLU(),
        pool or xpnet.MaxPool2d(2),
        xpnet.Conv2d(3, 4, 3, padding=1, dtype="float64", rng=rng), xpnet.ReLU(),
        xpnet.MaxPool2d(2), xpnet.Flatten(), xpnet.Linear(4 * 2 * 2, 3, dtype="float64",
                                                          rng=rng))
    net.fuse = fuse
    return net


def _run(net: xpnet.Sequential, x: np.ndarray, dout_seed: int = 1, input_grad: bool = True):
    y = net.forward(dev(x))
    d = np.random.default_rng(dout_seed).standard_normal(tuple(y.shape))
    dx = net.backward(dev(d), input_grad=input_grad)
    grads = {k: to_np(p.grad) for k, p in net.parameters().items()}
    return to_np(y), None if dx is None else to_np(dx), grads


def test_the_order_swaps_only_relu_then_maxpool():
    net = _conv_net(True)
    assert net.run_order() == [0, 2, 1, 3, 5, 4, 6, 7]
    net.fuse = False
    assert net.run_order() == list(range(8))

    class MyReLU(xpnet.ReLU):
        pass
    odd = xpnet.Sequential(MyReLU(), xpnet.MaxPool2d(2), xpnet.ReLU(), xpnet.AvgPool2d(2),
                           xpnet.ReLU(), xpnet.ReLU(), xpnet.MaxPool2d(2))
    assert odd.run_order() == [0, 1, 2, 3, 4, 6, 5]


@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1), (2, 1, 0)], ids=["2x2", "3s2p1",
                                                                          "2s1"])
def test_reordered_equals_layer_by_layer(backend, pool):
    k, s, p = pool
    # integer values on a coarse grid: many ties and zeros inside the pooling windows
    x = np.random.default_rng(0).integers(-2, 3, (2, 2, 8, 8)).astype(np.float64)
    if (k, s) == (2, 2):  # the whole net
        fused = _run(_conv_net(True, xpnet.MaxPool2d(k, s, p)), x)
        plain = _run(_conv_net(False, xpnet.MaxPool2d(k, s, p)), x)
    else:  # another first pool changes the head's size: the trunk only
        trunk = [xpnet.Conv2d(2, 3, 3, padding=1, dtype="float64", rng=xpnet.Generator(7)),
                 xpnet.ReLU(), xpnet.MaxPool2d(k, s, p)]
        a, b = xpnet.Sequential(*trunk), xpnet.Sequential(*trunk)
        b.fuse = False
        fused, plain = _run(a, x), _run(b, x)
    np.testing.assert_array_equal(fused[0], plain[0])
    np.testing.assert_allclose(fused[1], plain[1], **TIGHT)
    assert fused[2].keys() == plain[2].keys()
    for name in fused[2]:
        np.testing.assert_allclose(fused[2][name], plain[2][name], err_msg=name, **TIGHT)


def test_relu_pool_on_raw_ties(backend):
    """A window whose values are all <= 0, or tie at a positive maximum, routes as the
    layer-by-layer order does (nothing, resp. the first maximum)."""
    x = np.array([[[[-1.0, -1.0, 2.0, 2.0], [0.0, -3.0, 1.0, 2.0],
                    [0.0, 0.0, 5.0, -1.0], [0.0, 0.0, 5.0, 5.0]]]])
    outs = []
    for fuse in (True, False):
        net = xpnet.Sequential(xpnet.ReLU(), xpnet.MaxPool2d(2))
        net.fuse = fuse
        outs.append(_run(net, x))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])  # no sums: exactly


def test_reordered_without_input_grad(backend):
    x = rand((2, 2, 8, 8))
    fused = _run(_conv_net(True), x, input_grad=False)
    plain = _run(_conv_net(False), x, input_grad=False)
    assert fused[1] is None and plain[1] is None
    for name in fused[2]:
        np.testing.assert_allclose(fused[2][name], plain[2][name], err_msg=name, **TIGHT)


def test_reordered_gradcheck(backend):
    gradcheck(_conv_net(True), rand((2, 2, 8, 8)),
              {"x", "0.W", "0.b", "3.W", "3.b", "7.W", "7.b"})


def test_a_reordered_sequential_is_reusable_in_one_pass(backend):
    """Per-call records: one Sequential used twice in a pass backpropagates each use."""
    class Twice(xpnet.Module):
        def __init__(self, fuse: bool):
            super().__init__()
            self.net = xpnet.Sequential(xpnet.ReLU(), xpnet.MaxPool2d(2), xpnet.Flatten(),
                                        xpnet.Linear(4, 2, dtype="float64",
                                                     rng=xpnet.Generator(1)))
            self.net.fuse = fuse

        def forward(self, x):
            return self.net.forward(x) + self.net.forward(x * 2.0 - 1.0)

        def backward(self, dout):
            return self.net.backward(dout) * 2.0 + self.net.backward(dout)

    x = rand((3, 1, 4, 4))
    results = []
    for fuse in (True, False):
        m = Twice(fuse)
        m.net.accumulate_grads(True)
        results.append(_run(m, x))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], **TIGHT)
    for name in results[0][2]:
        np.testing.assert_allclose(results[0][2][name], results[1][2][name], **TIGHT)
    gradcheck(Twice(True), x, {"x", "net.3.W", "net.3.b"})


# ------------------------------------------------------------------ the Conv2d + ReLU epilogue
PATHS = ("auto", "grid", "im2col")


def _conv_relu_net(fuse: bool, path: str = "auto", stride: int = 1) -> xpnet.Sequential:
    """conv -> relu -> conv(stride) -> relu -> pool -> relu (not fused: a pool between),
    flatten, linear: two fused steps, then the swapped pool and relu."""
    rng = xpnet.Generator(3)
    c1 = xpnet.Conv2d(2, 3, 3, padding=1, dtype="float64", rng=rng)
    c2 = xpnet.Conv2d(3, 4, 3, stride=stride, padding=1, dtype="float64", rng=rng)
    c1.path = c2.path = path
    size = 8 // stride // 2
    net = xpnet.Sequential(c1, xpnet.ReLU(), c2, xpnet.ReLU(), xpnet.ReLU(), xpnet.MaxPool2d(2),
                           xpnet.Flatten(), xpnet.Linear(4 * size * size, 3, dtype="float64",
                                                         rng=rng))
    net.fuse = fuse
    return net


def test_the_plan_fuses_exactly_a_conv2d_then_a_relu():
    net = _conv_relu_net(True)
    # 3 (ReLU) and 4, 5 (ReLU, MaxPool2d) swap: conv 2 runs before ReLU 3 and fuses with it
    assert net.run_plan() == [(0, 1), (2, 3), (5,), (4,), (6,), (7,)]
    net.fuse = False
    assert net.run_plan() == [(i,) for i in range(8)]

    class MyConv(xpnet.Conv2d):
        pass

    class MyReLU(xpnet.ReLU):
        pass
    odd = xpnet.Sequential(MyConv(1, 1, 3), xpnet.ReLU(), xpnet.Conv2d(1, 1, 3), MyReLU(),
                           xpnet.ConvMaxPool2d(1, 1, 3), xpnet.ReLU(), xpnet.Conv2d(1, 1, 3),
                           xpnet.LeakyReLU(), xpnet.Conv2d(1, 1, 3))
    assert odd.run_plan() == [(i,) for i in range(9)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_relu_epilogue_equals_layer_by_layer(backend, path, stride):
    # integer inputs on a coarse grid: convolution outputs of exactly 0 (the mask's edge)
    x = np.random.default_rng(0).integers(-2, 3, (2, 2, 8, 8)).astype(np.float64)
    for input_grad in (True, False):
        fused = _run(_conv_relu_net(True, path, stride), x, input_grad=input_grad)
        plain = _run(_conv_relu_net(False, path, stride), x, input_grad=input_grad)
        np.testing.assert_allclose(fused[0], plain[0], **TIGHT)
        if input_grad:
            np.testing.assert_allclose(fused[1], plain[1], **TIGHT)
        else:
            assert fused[1] is None and plain[1] is None
        for name in fused[2]:
            np.testing.assert_allclose(fused[2][name], plain[2][name], err_msg=name, **TIGHT)


@pytest.mark.parametrize("path", PATHS)
def test_conv_relu_epilogue_gradcheck(backend, path):
    gradcheck(_conv_relu_net(True, path), rand((2, 2, 8, 8)),
              {"x", "0.W", "0.b", "2.W", "2.b", "7.W", "7.b"})


def test_a_fused_relu_module_is_not_called(backend):
    net = _conv_relu_net(True)
    net.forward(dev(rand((2, 2, 8, 8))))
    assert not net[1].__dict__.get("_calls") and net[0]._calls[-1].record[1] is not None


def test_one_conv_fused_once_and_plain_once_in_a_pass(backend):
    """Per-call records: a Conv2d used twice in a pass, with the epilogue and without,
    backpropagates each use with its own mask (gradients summed over both uses)."""
    def net(fuse: bool) -> xpnet.Sequential:
        conv = xpnet.Conv2d(2, 2, 3, padding=1, dtype="float64", rng=xpnet.Generator(5))
        seq = xpnet.Sequential(conv, xpnet.ReLU(), conv, xpnet.Flatten())
        seq.fuse = fuse
        return seq
    x = rand((2, 2, 5, 5))
    fused, plain = _run(net(True), x), _run(net(False), x)
    assert net(True).run_plan() == [(0, 1), (2,), (3,)]
    np.testing.assert_allclose(fused[0], plain[0], **TIGHT)
    np.testing.assert_allclose(fused[1], plain[1], **TIGHT)
    for name in fused[2]:
        np.testing.assert_allclose(fused[2][name], plain[2][name], err_msg=name, **TIGHT)


def test_conv_relu_flag_is_checked_and_eval_keeps_nothing(backend):
    conv = xpnet.Conv2d(2, 3, 3, padding=1, dtype="float64")
    x = dev(rand((1, 2, 5, 5)))
    with pytest.raises(TypeError, match="relu"):
        conv.forward(x, relu="yes")
    assert not conv.__dict__.get("_calls")  # the refused call left no record
    conv.eval()
    y = conv.forward(x, relu=True)
    assert conv._calls[-1].record == (None, None)
    assert float(np.min(to_np(y))) >= 0.0
    np.testing.assert_allclose(to_np(y), np.maximum(to_np(conv.forward(x)), 0.0), **TIGHT)
    with xpnet.no_grad():
        np.testing.assert_allclose(to_np(conv.forward(x, relu=True)), to_np(y), **TIGHT)


def test_deep_conv_net_fused_equals_layer_by_layer(backend):
    from xpnet.models import DeepConvNet
    x = rand((2, 1, 28, 28))
    runs = []
    for fuse in (True, False):
        net = DeepConvNet(dtype="float64", dropout=0.0)
        net.fuse = fuse
        runs.append(_run(net, x, input_grad=False))
    assert DeepConvNet().run_plan()[:2] == [(0, 1), (2,)]
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12, atol=1e-12)
    for name in runs[0][2]:
        np.testing.assert_allclose(runs[0][2][name], runs[1][2][name], err_msg=name,
                                   rtol=1e-10, atol=1e-12)


def test_conv_max_pool_refuses_the_relu_epilogue(backend):
    layer = xpnet.ConvMaxPool2d(1, 2, 3, dtype="float64")
    with pytest.raises(ValueError, match="relu=True is not supported"):
        layer.forward(dev(rand((1, 1, 6, 6))), relu=True)
    assert not layer.__dict__.get("_calls")


def test_an_output_changed_in_place_keeps_the_epilogue_gradient_right(backend):
    """The epilogue keeps its own mask, not the output it returns: a caller that changes the
    output in place before backward (a residual add, a shift) still gets the gradients of
    the layer-by-layer run."""
    class Shifted(xpnet.Module):
        def __init__(self, fuse: bool):
            super().__init__()
            self.body = xpnet.Sequential(
                xpnet.Conv2d(3, 4, 3, padding=1, dtype="float64", rng=xpnet.Generator(6)),
                xpnet.ReLU())
            self.body.fuse = fuse

        def forward(self, x):
            y = self.body(x)
            y -= 10.0  # in place, on the array the fused convolution returned
            return y

        def backward(self, dout, *, input_grad=True):
            return self.body.backward(dout, input_grad=input_grad)

    x = rand((2, 3, 5, 5))
    fused, plain = _run(Shifted(True), x), _run(Shifted(False), x)
    np.testing.assert_allclose(fused[0], plain[0], **TIGHT)
    np.testing.assert_allclose(fused[1], plain[1], **TIGHT)
    for name in fused[2]:
        np.testing.assert_allclose(fused[2][name], plain[2][name], err_msg=name, **TIGHT)


def test_summary_lists_every_relu_of_a_fused_pair(backend):
    """Module.summary spies on each layer's forward; a spied layer is not fused, so the
    table keeps every ReLU (DeepConvNet has 7)."""
    from xpnet.models import DeepConvNet
    table = DeepConvNet().summary((1, 28, 28))
    assert sum(" ReLU " in f" {line} " for line in table.splitlines()) == 7
