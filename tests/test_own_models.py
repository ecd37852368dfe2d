"""Own models: distinct default initialisation, optimizer state that follows device and dtype
moves, parameter groups, freezing, summary, dtype cast and named errors for custom layers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, require_backend, to_np, use_backend

import xpnet
from xpnet.models import MultiLayerNet, TwoLayerNet


def test_layers_without_rng_get_distinct_reproducible_weights():
    xpnet.manual_seed(7)
    a, b = xpnet.Linear(3, 4), xpnet.Linear(3, 4)
    assert not np.array_equal(to_np(a.W.data), to_np(b.W.data))
    xpnet.manual_seed(7)
    np.testing.assert_array_equal(to_np(xpnet.Linear(3, 4).W.data), to_np(a.W.data))
    # an explicit generator is unchanged by the default one
    explicit = xpnet.Linear(3, 4, rng=xpnet.Generator(0)).W.data
    np.testing.assert_array_equal(to_np(explicit),
                                  to_np(xpnet.Linear(3, 4, rng=xpnet.Generator(0)).W.data))
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        xpnet.manual_seed(-1)


def test_convs_and_dropouts_without_rng_differ_and_reproduce(backend):
    xpnet.manual_seed(3)
    a, b = xpnet.Conv2d(2, 3, 3), xpnet.Conv2d(2, 3, 3)
    assert not np.array_equal(to_np(a.W.data), to_np(b.W.data))
    x = dev(np.ones((4, 64), dtype=np.float32))
    d1, d2 = xpnet.Dropout(0.5), xpnet.Dropout(0.5)
    m1, m2 = to_np(d1(x)), to_np(d2(x))
    assert not np.array_equal(m1, m2)  # independent masks, not one stream twice
    xpnet.manual_seed(3)
    np.testing.assert_array_equal(to_np(xpnet.Conv2d(2, 3, 3).W.data), to_np(a.W.data))
    xpnet.Conv2d(2, 3, 3)
    np.testing.assert_array_equal(to_np(xpnet.Dropout(0.5)(x)), m1)


def _step(model, opt, x, y):
    loss = xpnet.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward(), input_grad=False)  # as the Trainer calls it
    opt.step()


@pytest.mark.parametrize("target", ["torch", "array_api_strict:device1"])
def test_optimizer_state_follows_the_model_to_another_backend(target):
    name, _, device = target.partition(":")
    require_backend(name)
    x_host = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    y_host = np.arange(8) % 3
    start = "numpy" if name == "torch" else "array_api_strict"
    ref = TwoLayerNet(4, 5, 3, seed=1)
    ref_opt = xpnet.Adam(ref, lr=0.1)
    with use_backend(start):
        ref.to_device()
        for _ in range(2):
            _step(ref, ref_opt, dev(x_host), dev(y_host))
    model = TwoLayerNet(4, 5, 3, seed=1)
    opt = xpnet.Adam(model, lr=0.1)
    with use_backend(start):
        model.to_device()
        _step(model, opt, dev(x_host), dev(y_host))
    with use_backend(name, device or None) as b:
        model.to_device()
        _step(model, opt, dev(x_host), dev(y_host))  # no TypeError from stale state
        slot = opt.state["0.W"]["m"]
        assert type(slot) is type(model[0].W.data) and slot.device == b.device
    for (k, a), c in zip(ref.state_dict().items(), model.state_dict().values()):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6, err_msg=k)


def test_optimizer_state_follows_a_dtype_cast(backend):
    model = TwoLayerNet(4, 5, 3, seed=1)
    opt = xpnet.Adam(model, lr=0.1)
    x, y = np.ones((4, 4), np.float32), np.arange(4) % 3
    _step(model, opt, dev(x), dev(y))
    model.to_dtype("float64")
    assert all(p.data.dtype == backend.xp.float64 for p in model.parameters().values())
    _step(model, opt, dev(x.astype(np.float64)), dev(y))
    assert opt.state["0.W"]["v"].dtype == backend.xp.float64
    with pytest.raises(ValueError, match="dtype must be .*got 'int32'"):
        model.to_dtype("int32")


def test_parameter_groups_lr_and_decay_by_hand(backend):
    model = TwoLayerNet(3, 4, 2, seed=0)
    before = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    opt = xpnet.SGD(model, lr=0.1, weight_decay=0.0,
                    groups=[{"params": model[0], "lr": 0.01, "weight_decay": 0.5}])
    sched = xpnet.StepLR(opt, 1, gamma=0.5)
    grads = {}
    for p_name, p in model.parameters().items():
        grads[p_name] = np.full(p.shape, 0.25)
        p.grad = dev(grads[p_name].astype(np.float32))
    opt.step()
    after = model.state_dict()
    np.testing.assert_allclose(after["0.W"], before["0.W"] - 0.01 * (0.25 + 0.5 * before["0.W"]),
                               rtol=1e-6)
    np.testing.assert_allclose(after["0.b"], before["0.b"] - 0.01 * 0.25, rtol=1e-6)  # no decay
    np.testing.assert_allclose(after["2.W"], before["2.W"] - 0.1 * 0.25, rtol=1e-6)
    sched.step()
    assert opt.group_lrs() == pytest.approx([0.005, 0.05])
    state = opt.state_dict()
    again = xpnet.SGD(model, lr=0.1, groups=[{"params": model[0], "lr": 0.01,
                                              "weight_decay": 0.5}])
    again.load_state_dict(state)
    assert again.group_lrs() == pytest.approx([0.005, 0.05])
    other = xpnet.SGD(model, lr=0.1, groups=[{"params": model[2], "lr": 0.01}])
    with pytest.raises(ValueError, match="parameter groups"):
        other.load_state_dict(state)


def test_parameter_groups_are_validated():
    model = TwoLayerNet(3, 4, 2)
    with pytest.raises(ValueError, match=r"parameter '0.W' is in groups\[0\] and groups\[1\]"):
        xpnet.Adam(model, groups=[{"params": model[0]}, {"params": model[0].W}])
    with pytest.raises(ValueError, match=r"groups\[0\] holds Parameter.*not among"):
        xpnet.Adam(model, groups=[{"params": xpnet.Linear(2, 2)}])
    with pytest.raises(ValueError, match=r"groups\[0\]\['lr'\] must be a finite number >= 0"):
        xpnet.Adam(model, groups=[{"params": model[0], "lr": -1.0}])
    with pytest.raises(ValueError, match=r"unknown keys \['momentum'\]"):
        xpnet.Adam(model, groups=[{"params": model[0], "momentum": 0.5}])


def test_frozen_layer_is_not_trained_and_its_backward_not_run(backend):
    model = MultiLayerNet(4, [6, 6], 3, seed=0)  # Linear ReLU Linear ReLU Linear
    model[0].freeze()
    calls = []
    backward = model[1].backward
    model[1].backward = lambda d, **kw: (calls.append(1), backward(d, **kw))[1]
    before = model.state_dict()
    opt = xpnet.Adam(model, lr=0.1)
    x, y = np.ones((5, 4), np.float32), np.arange(5) % 3
    _step(model, opt, dev(x), dev(y))
    after = model.state_dict()
    np.testing.assert_array_equal(after["0.W"], before["0.W"])
    assert model[0].W.grad is None and "0.W" not in opt.state
    assert not np.array_equal(after["2.W"], before["2.W"])
    assert calls == []  # nothing below the first trainable layer (2) is backpropagated
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - 30
    model[0].unfreeze()
    model.backward(model.forward(dev(x)), input_grad=False)
    assert calls == [1] and model[0].W.grad is not None


def test_summary_table(backend):
    model = MultiLayerNet(6, [8], 3, batchnorm=True, seed=0)
    model[0].freeze()
    table = model.summary((6,))
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "params", "trainable"]
    assert lines[2].split() == ["0", "Linear", "(N,", "8)", "56", "0"]
    assert lines[3].split() == ["1", "BatchNorm", "(N,", "8)", "16", "16"]
    assert lines[-1] == "total: 99 parameters, 43 trainable, 56 frozen; input (N, 6)"
    running = to_np(model[1].running_mean)
    np.testing.assert_array_equal(running, np.zeros(8))  # evaluation mode: untouched
    assert model.training
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
        model.summary((0, 6))


class _NoSuper(xpnet.Module):
    def __init__(self):
        pass


class _Scale(xpnet.Module):
    def __init__(self):
        super().__init__()
        self.s = xpnet.Parameter(xpnet.to_device(np.ones(1, np.float32)))

    def forward(self, x):
        self._x = x
        return x * self.s.data

    def backward(self, dout):
        self.s.grad = (dout * self._x).sum()
        return dout * self.s.data


def test_custom_layer_mistakes_are_named():
    with pytest.raises(RuntimeError, match=r"_NoSuper.__init__ must call super\(\).__init__"):
        _NoSuper().parameters()
    with pytest.raises(RuntimeError, match=r"_Scale\(\): backward was called before forward; "
                                           "call forward first"):
        _Scale().backward(xpnet.to_device(np.ones(2, np.float32)))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _Scale().nothing  # noqa: B018
