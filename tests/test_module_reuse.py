"""One module object used several times: each call keeps its own record, backward takes them
in reverse order, a shared parameter's gradients are summed, and only the latest forward pass
is kept (xpnet/module.py, xpnet/grad_mode.py). Float64 central-difference checks on every
backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_gradients_close, dev, to_np

import xpnet
from xpnet.gradcheck import check_module


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


class ReusedActivation(xpnet.Module):
    """One ``self.relu`` after two layers (torchvision's BasicBlock writes it so)."""

    def __init__(self):
        super().__init__()
        rng = xpnet.Generator(0)
        self.fc1 = xpnet.Linear(4, 4, rng=rng, dtype="float64")
        self.fc2 = xpnet.Linear(4, 4, rng=rng, dtype="float64")
        # biases away from zero: a row that ReLU zeroes whole must not sit on the next kink
        self.fc1.b.data, self.fc2.b.data = dev(_rand(4, seed=3)), dev(_rand(4, seed=4))
        self.relu = xpnet.ReLU()

    def forward(self, x):
        return self.relu(self.fc2(self.relu(self.fc1(x))))

    def backward(self, dout, *, input_grad=True):
        d = self.fc2.backward(self.relu.backward(dout))
        return self.fc1.backward(self.relu.backward(d), input_grad=input_grad)


class TiedLinear(xpnet.Module):
    """One Linear applied twice: ``lin(tanh(lin(x)))`` (tied weights)."""

    def __init__(self):
        super().__init__()
        self.lin = xpnet.Linear(4, 4, rng=xpnet.Generator(1), dtype="float64")
        self.act = xpnet.Tanh()

    def forward(self, x):
        return self.lin(self.act(self.lin(x)))

    def backward(self, dout, *, input_grad=True):
        return self.lin.backward(self.act.backward(self.lin.backward(dout)))


class TwoBranch(xpnet.Module):
    """``conv(x) + conv(tanh(x))``: one Conv2d shared by two branches, summed."""

    def __init__(self, path="auto", stride=1, padding=1):
        super().__init__()
        self.conv = xpnet.Conv2d(2, 2, 3, stride=stride, padding=padding,
                                 rng=xpnet.Generator(2), dtype="float64")
        self.conv.b.data = dev(_rand(2, seed=5))
        self.conv.path = path
        self.act = xpnet.Tanh()

    def forward(self, x):
        return self.conv(x) + self.conv(self.act(x))

    def backward(self, dout, *, input_grad=True):
        d_branch = self.act.backward(self.conv.backward(dout))  # the latest call first
        return self.conv.backward(dout) + d_branch


class ReusedBatchNorm(xpnet.Module):
    """``bn(tanh(bn(x)))`` in training mode: each call normalises by its own batch."""

    def __init__(self):
        super().__init__()
        self.bn = xpnet.BatchNorm(3, dtype="float64")
        self.bn.gamma.data = dev(_rand(3, seed=7) + 2.0)
        self.bn.beta.data = dev(_rand(3, seed=8))
        self.act = xpnet.Tanh()

    def forward(self, x):
        return self.bn(self.act(self.bn(x)))

    def backward(self, dout, *, input_grad=True):
        return self.bn.backward(self.act.backward(self.bn.backward(dout)))


def test_reused_activation_gradcheck(backend):
    assert_gradients_close(check_module(ReusedActivation(), dev(_rand((6, 4), seed=1))),
                           {"x", "fc1.W", "fc1.b", "fc2.W", "fc2.b"})


def test_tied_linear_applied_twice_gradcheck(backend):
    assert_gradients_close(check_module(TiedLinear(), dev(_rand((5, 4)))),
                           {"x", "lin.W", "lin.b"})


@pytest.mark.parametrize("path,stride,padding", [("auto", 1, 1), ("grid", 1, 1),
                                                 ("im2col", 1, 1), ("im2col", 2, 1)],
                         ids=["auto", "grid", "im2col", "im2col-stride2"])
def test_shared_conv_in_a_two_branch_block_gradcheck(backend, path, stride, padding):
    block = TwoBranch(path, stride, padding)
    assert_gradients_close(check_module(block, dev(_rand((2, 2, 5, 6)))),
                           {"x", "conv.W", "conv.b"})


def test_shared_conv_two_branches_equal_two_copies(backend):
    """The shared conv's gradients are the sum of two separate convs' (same weights)."""
    block = TwoBranch()
    a, b = (xpnet.Conv2d(2, 2, 3, padding=1, dtype="float64") for _ in range(2))
    for c in (a, b):
        c.W.data, c.b.data = block.conv.W.data, block.conv.b.data
    x, dout = dev(_rand((2, 2, 5, 6))), dev(_rand((2, 2, 5, 6), seed=3))
    block(x)
    block.backward(dout)
    act = xpnet.Tanh()
    a(x), b(act(x))
    a.backward(dout), act.backward(b.backward(dout))
    for name in ("W", "b"):
        np.testing.assert_allclose(to_np(getattr(block.conv, name).grad),
                                   to_np(getattr(a, name).grad) + to_np(getattr(b, name).grad),
                                   rtol=1e-12, atol=1e-12, err_msg=name)


def test_reuse_inside_sequential_gradcheck(backend):
    lin = xpnet.Linear(3, 3, rng=xpnet.Generator(3), dtype="float64")
    model = xpnet.Sequential(lin, xpnet.Tanh(), lin, xpnet.Sigmoid(), lin)
    assert list(model.parameters()) == ["0.W", "0.b"]  # named once, at its first place
    assert list(model.modules()) == ["", "0", "1", "3"]
    assert_gradients_close(check_module(model, dev(_rand((4, 3)))), {"x", "0.W", "0.b"})


def test_reused_batchnorm_gradcheck_and_running_statistics(backend):
    assert_gradients_close(check_module(ReusedBatchNorm(), dev(_rand((6, 3)))),
                           {"x", "bn.gamma", "bn.beta"})
    model = ReusedBatchNorm()
    x = _rand((6, 3))
    model(dev(x))
    first = np.tanh((x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * to_np(model.bn.gamma.data)
                    + to_np(model.bn.beta.data))
    expected = 0.9 * (0.1 * x.mean(0)) + 0.1 * first.mean(0)  # one momentum step per call
    np.testing.assert_allclose(to_np(model.bn.running_mean), expected, rtol=1e-10)


def test_gradients_sum_within_a_pass_assign_across_passes_and_accumulate_on_request(backend):
    model = TiedLinear()
    x, dout = dev(_rand((5, 4))), dev(_rand((5, 4), seed=1))

    def step():
        model(x)
        model.backward(dout)
        return to_np(model.lin.W.grad).copy()

    g = step()
    np.testing.assert_allclose(step(), g, rtol=1e-12)  # a new pass assigns: not 2 g
    model.accumulate_grads()
    model.zero_grad()
    step()
    np.testing.assert_allclose(step(), 2 * g, rtol=1e-12)  # accumulating: keeps adding


def test_a_backward_rewriting_its_own_gradient_assigns(backend):
    class Doubled(xpnet.Linear):
        def backward(self, dout, *, input_grad=True):
            dx = super().backward(dout, input_grad=input_grad)
            self.W.grad = self.W.grad * 2.0  # the same use: a rewrite, not a second use
            return dx

    lin = Doubled(3, 2, rng=xpnet.Generator(5), dtype="float64")
    x, dout = _rand((4, 3)), _rand((4, 2), seed=1)
    lin(dev(x))
    lin.backward(dev(dout))
    np.testing.assert_allclose(to_np(lin.W.grad), 2.0 * x.T @ dout, rtol=1e-12)


def test_a_tied_parameter_in_two_modules_is_listed_once_and_its_gradients_summed(backend):
    rng = xpnet.Generator(4)
    a, b = (xpnet.Linear(3, 3, rng=rng, dtype="float64") for _ in range(2))
    b.W = a.W
    model = xpnet.Sequential(a, xpnet.Tanh(), b)
    assert list(model.parameters()) == ["0.W", "0.b", "2.b"]
    assert_gradients_close(check_module(model, dev(_rand((4, 3)))), {"x", "0.W", "0.b", "2.b"})


def test_repeated_forwards_without_backward_keep_one_pass(backend):
    model = ReusedActivation()
    x = dev(_rand((6, 4)))
    for _ in range(5):
        model(x)
    assert len(model.relu._calls) == 2 and len(model.fc1._calls) == 1  # one pass: two uses
    assert len(model._calls) == 1
    model.backward(dev(np.ones((6, 4))))
    assert not model.relu._calls and not model.fc1._calls
    with xpnet.no_grad():
        model(x)
    assert not model.relu._calls  # nothing recorded under no_grad


def test_a_second_outermost_call_drops_the_first_and_backward_says_so(backend):
    lin = xpnet.Linear(3, 2, dtype="float64")
    lin(dev(_rand((4, 3))))
    lin(dev(_rand((4, 3), seed=1)))  # a new pass: the first call's record is dropped
    lin.backward(dev(np.ones((4, 2))))
    with pytest.raises(RuntimeError, match="a new outermost forward call"):
        lin.backward(dev(np.ones((4, 2))))


def test_a_module_keeping_attributes_is_refused_at_its_second_call_with_the_reason(backend):
    class Scale(xpnet.Module):
        def forward(self, x):
            self._x = x
            return 2.0 * x

        def backward(self, dout):
            return 2.0 * dout

    class Twice(xpnet.Module):
        def __init__(self):
            super().__init__()
            self.s = Scale()

        def forward(self, x):
            return self.s(self.s(x))

    x = dev(_rand((2, 3)))
    Scale()(x)  # once per pass is fine
    with pytest.raises(RuntimeError, match=r"called a second time in one forward pass, but "
                                           r"its forward keeps _x as attributes"):
        Twice()(x)


def test_a_module_containing_itself_is_refused():
    outer = xpnet.Sequential(xpnet.ReLU())
    outer.layers.append(outer)
    with pytest.raises(ValueError, match="contains itself"):
        outer.parameters()
