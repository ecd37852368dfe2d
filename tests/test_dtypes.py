"""dtype discipline: a float32 training step creates no float64 array; float64 stays float64."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from conftest import dev, require_backend, use_backend

import xpnet


def _small_cnn(dtype):
    rng = xpnet.Generator(0)
    return xpnet.Sequential(
        xpnet.Conv2d(1, 4, 3, padding=1, dtype=dtype, rng=rng), xpnet.BatchNorm(4, dtype=dtype),
        xpnet.ReLU(), xpnet.MaxPool2d(2), xpnet.Flatten(),
        xpnet.Linear(4 * 4 * 4, 10, dtype=dtype, rng=rng), xpnet.Dropout(0.3, rng=rng))


def _data(dtype):
    rng = np.random.default_rng(0)
    x = xpnet.to_device(rng.standard_normal((6, 1, 8, 8)).astype(dtype))
    t = xpnet.to_device(rng.integers(0, 10, 6))
    return x, t


def _train(dtype, steps=2):
    """Build a small CNN and run a few training steps; return everything that was touched."""
    model = _small_cnn(dtype)
    loss_fn = xpnet.SoftmaxCrossEntropy()
    opt = xpnet.Adam(model, lr=1e-3, weight_decay=1e-4, clip_norm=5.0)
    x, t = _data(dtype)
    outputs = []
    for _ in range(steps):
        out = model(x)
        loss = loss_fn(out, t)
        model.zero_grad()
        dx = model.backward(loss_fn.backward())
        opt.step()
        outputs += [out, loss, dx]
    return model, opt, loss_fn, outputs


def _arrays(obj, seen=None):
    """Every array reachable from layers, parameters, records, tuples, lists and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if array_api_compat.is_array_api_obj(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _arrays(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _arrays(item, seen)
    elif isinstance(obj, xpnet.module._Call):  # one forward call's record
        yield from _arrays(obj.record, seen)
    elif isinstance(obj, xpnet.Parameter):
        yield from _arrays(obj.data, seen)
        yield from _arrays(obj.grad, seen)
    elif isinstance(obj, (xpnet.Module, xpnet.SoftmaxCrossEntropy)):
        for item in vars(obj).values():
            yield from _arrays(item, seen)


def _assert_floats_are(objects, xp, dtype, at_least):
    arrays = list(_arrays(objects))
    floats = [a for a in arrays if xp.isdtype(a.dtype, "real floating")]
    assert len(floats) >= at_least  # the walk really reached what it should
    bad = sorted({f"{tuple(a.shape)} {a.dtype}" for a in floats if a.dtype != dtype})
    assert not bad, f"arrays that are not {dtype}: {bad}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_step_keeps_the_model_dtype_everywhere(backend, dtype):
    model, opt, loss_fn, outputs = _train(dtype)
    xp = backend.xp
    assert all(p.grad is not None for p in model.parameters().values())
    assert set(opt.state) == set(model.parameters())
    model(_data(dtype)[0])  # a forward without backward: its records are walked too
    assert model[6]._calls[-1].record[0] is not None  # the dropout mask
    assert model[0]._calls[-1].record[0] is not None  # the convolution's saved input
    # at least 6 params + 6 grads + 2 buffers + 12 Adam slots + 6 outputs, plus caches
    _assert_floats_are([model, opt.state, loss_fn, outputs], xp, getattr(xp, dtype), 32)


def test_eval_forward_keeps_float32(backend):
    model = _small_cnn("float32").eval()
    x, _ = _data("float32")
    out = model(x)
    _assert_floats_are([model, out], backend.xp, backend.xp.float32, 9)


def test_the_walk_would_catch_a_float64_array(backend):
    model = _small_cnn("float32")
    model[1].running_var = dev(np.ones(4))  # a float64 buffer slipped in
    with pytest.raises(AssertionError, match="float64"):
        _assert_floats_are(model, backend.xp, backend.xp.float32, 1)


# ---------------------------------------------------------------------- torch: every op
def _float64_detector():
    torch = pytest.importorskip("torch")
    from torch.overrides import TorchFunctionMode

    class Float64Detector(TorchFunctionMode):
        """Records every torch call whose result holds a float64 tensor."""

        def __init__(self):
            super().__init__()
            self.calls = 0
            self.float64 = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.calls += 1
            results = out if isinstance(out, (tuple, list)) else (out,)
            for r in results:
                if isinstance(r, torch.Tensor) and r.dtype == torch.float64:
                    self.float64.append(getattr(func, "__name__", repr(func)))
            return out

    return torch, Float64Detector()


def test_torch_mode_detects_a_deliberate_float64_op(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("torch")
    torch, detector = _float64_detector()
    with detector:
        a = torch.ones(3, dtype=torch.float32)
        b = a * 2.0
        assert detector.float64 == []
        c = a.to(torch.float64) + b
    assert c.dtype == torch.float64
    assert detector.float64, "the mode missed a float64 result"
    with use_backend("torch"):
        _, detector = _float64_detector()
        with detector:
            xpnet.to_device(np.ones(3))  # host float64 data keeps its dtype
        assert detector.float64


def test_torch_float32_training_step_creates_no_float64_tensor(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("torch")
    with use_backend("torch"):
        _, detector = _float64_detector()
        with detector:
            _train("float32", steps=2)
    assert detector.calls > 100  # the mode really saw the step
    assert detector.float64 == [], f"float64 results from: {sorted(set(detector.float64))}"
