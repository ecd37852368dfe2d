"""The module/optimizer seam: attribute registration, modules used twice, gradient
accumulation on request, ``backward(dout, input_grad=...)`` and optimizer gradient hooks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np

import xpnet


class Block(xpnet.Module):
    """A custom module whose parts are plain attributes."""

    def __init__(self):
        super().__init__()
        rng = xpnet.Generator(3)
        self.fc1 = xpnet.Linear(3, 4, rng=rng, dtype="float64")
        self.act = xpnet.Tanh()
        self.fc2 = xpnet.Linear(4, 2, rng=rng, dtype="float64")
        self.scale = xpnet.Parameter(dev(np.full((2,), 2.0)))

    def forward(self, x):
        self._last = self.fc2(self.act(self.fc1(x)))
        return self._last * self.scale.data

    def backward(self, dout):  # no input_grad keyword: the base class adds it
        self.scale.grad = xpnet.current().xp.sum(dout * self._last, axis=0)
        return self.fc1.backward(self.act.backward(self.fc2.backward(dout * self.scale.data)))


def test_attributes_register_children_and_parameters_in_order(backend):
    block = Block()
    assert [n for n, _ in block.children()] == ["fc1", "act", "fc2"]
    assert list(block.parameters()) == ["scale", "fc1.W", "fc1.b", "fc2.W", "fc2.b"]
    assert list(block.modules()) == ["", "fc1", "act", "fc2"]
    block.eval()
    assert not block.fc1.training and not block.act.training
    state = block.state_dict()
    assert set(state) == set(block.parameters())


def test_custom_backward_without_keyword_accepts_input_grad(backend):
    block = Block()
    x = dev(np.random.default_rng(0).standard_normal((5, 3)))
    block(x)
    dx = block.backward(dev(np.ones((5, 2))), input_grad=False)
    assert tuple(dx.shape) == (5, 3)  # a user's backward always computes it: that is allowed
    assert all(p.grad is not None for p in block.parameters().values())


def test_missing_super_init_is_named():
    class Bad(xpnet.Module):
        def __init__(self):
            self.fc = xpnet.Linear(2, 2)

    with pytest.raises(RuntimeError, match=r"Bad.__init__ must call super\(\).__init__\(\)"):
        Bad()


def test_module_used_twice_is_accepted_and_named_once():
    lin = xpnet.Linear(2, 2)
    assert list(xpnet.Sequential(lin, lin).parameters()) == ["0.W", "0.b"]

    class Twice(xpnet.Module):
        def __init__(self):
            super().__init__()
            self.a = lin
            self.b = lin

    assert list(Twice().parameters()) == ["a.W", "a.b"]
    nested = xpnet.Sequential(lin, xpnet.Sequential(xpnet.ReLU(), lin))
    assert list(nested.modules()) == ["", "0", "1", "1.0"]
    assert list(nested.parameters()) == ["0.W", "0.b"]
    assert list(xpnet.SGD(nested, lr=0.1).params) == ["0.W", "0.b"]


def test_tied_parameter_is_listed_once():
    a, b = xpnet.Linear(2, 2), xpnet.Linear(2, 2)
    b.W = a.W
    assert list(xpnet.Sequential(a, b).parameters()) == ["0.W", "0.b", "1.b"]


def test_list_of_modules_is_refused_with_a_pointer_to_sequential():
    class Listy(xpnet.Module):
        def __init__(self):
            super().__init__()
            self.blocks = [xpnet.Linear(2, 2), xpnet.ReLU()]

    with pytest.raises(TypeError, match=r"Listy.blocks: a list of modules.*Sequential"):
        Listy()


def test_parameter_attribute_cannot_be_replaced_by_an_array(backend):
    lin = xpnet.Linear(2, 2)
    with pytest.raises(TypeError, match=r"Linear.W is a parameter; assign a Parameter"):
        lin.W = dev(np.zeros((2, 2), dtype=np.float32))


def _two_batches():
    rng = np.random.default_rng(1)
    return [dev(rng.standard_normal((4, 3))) for _ in range(2)], \
        [dev(rng.standard_normal((4, 2))) for _ in range(2)]


def test_gradients_assign_by_default_and_accumulate_on_request(backend):
    xs, ds = _two_batches()
    model = xpnet.Sequential(xpnet.Linear(3, 2, dtype="float64", rng=xpnet.Generator(0)))
    W = model[0].W
    expected = [to_np(x).T @ to_np(d) for x, d in zip(xs, ds)]
    for x, d in zip(xs, ds):
        model(x)
        model.backward(d)
    np.testing.assert_allclose(to_np(W.grad), expected[1])  # textbook: the last pass only
    model.zero_grad()
    model.accumulate_grads()
    for x, d in zip(xs, ds):
        model(x)
        model.backward(d, input_grad=False)
    np.testing.assert_allclose(to_np(W.grad), expected[0] + expected[1])
    W.grad += W.grad * 0.0  # an in-place update is not a second backward pass
    np.testing.assert_allclose(to_np(W.grad), expected[0] + expected[1])
    W.replace_grad(None)
    assert W.grad is None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters().values())
    model.accumulate_grads(False)
    assert not W.accumulate


def test_linear_input_grad_false_returns_none_with_the_same_parameter_grads(backend):
    x, d = dev(np.ones((3, 2))), dev(np.ones((3, 4)))
    lin = xpnet.Linear(2, 4, dtype="float64")
    lin(x)
    assert lin.backward(d, input_grad=False) is None
    gw = to_np(lin.W.grad)
    lin(x)
    assert tuple(lin.backward(d).shape) == (3, 2)
    np.testing.assert_array_equal(to_np(lin.W.grad), gw)


def test_grad_hooks_run_first_in_order_and_can_be_removed(backend):
    lin = xpnet.Linear(1, 1, bias=False, init=1.0, dtype="float64")
    lin.W.data = dev(np.array([[1.0]]))
    calls = []

    def halve(params):
        calls.append("halve")
        for p in params.values():
            p.replace_grad(p.grad * 0.5)

    def record(params):
        calls.append(float(to_np(params["W"].grad)[0, 0]))

    opt = xpnet.SGD(lin, lr=0.1, weight_decay=1.0, clip_norm=1.0)
    remove = opt.register_grad_hook(halve)
    opt.register_grad_hook(record)
    lin.W.grad = dev(np.array([[4.0]]))
    opt.step()
    # hooks first (4 -> 2), then clipping (2 -> ~1), then decay (+1 * W) and the update
    assert calls == ["halve", 2.0]
    clipped = 2.0 * min(1.0 / (2.0 + 1e-6), 1.0)
    np.testing.assert_allclose(to_np(lin.W.data), [[1.0 - 0.1 * (clipped + 1.0)]])
    remove()
    lin.W.grad = dev(np.array([[0.5]]))
    opt.step()
    assert calls == ["halve", 2.0, 0.5]
    with pytest.raises(TypeError, match="hook must be a callable"):
        opt.register_grad_hook(3)
