"""Mixed precision (xpnet/precision.py): the policy's casts, per-layer low-precision gradients
against float64, dynamic loss scaling (overflow, skip, halve, grow), exact resume with the
scaler, and optimizers refusing half-precision parameters."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import xpnet
from tests.conftest import dev
from xpnet import precision
from xpnet.backend import to_numpy
from xpnet.precision import LossScaler, PrecisionUnsupportedError
from xpnet.train import LossScaling, SaveCheckpoint, Trainer, train_step

# (backend, policy) pairs that have their low dtype; array_api_strict has neither float16 nor
# bfloat16, NumPy has no bfloat16.
SUPPORTED = [("numpy", "mixed16"), ("torch", "mixed16"), ("torch", "bf16")]
LOW = {"mixed16": "float16", "bf16": "bfloat16"}

# Tolerances per dtype, from the unit roundoff u: float16 keeps 11 significant bits
# (u = 2**-11 ~ 4.9e-4), bfloat16 8 (u = 2**-8 ~ 3.9e-3: 8x coarser, so 8x looser). Chainer's
# float16 tests use atol 5e-4, rtol 5e-3 for unit-sized values; a sum over K products of
# rounded inputs grows the absolute error like sqrt(K) (independent roundings), so atol is
# scaled by sqrt(K), K the length of the layer's reduction.
TOL = {"mixed16": (5e-4, 5e-3), "bf16": (4e-3, 4e-2)}


def _policy_backend(name, policy):
    from tests.conftest import require_backend, use_backend
    require_backend(name)
    return use_backend(name)


def _close(got, ref, policy, k, what):
    atol, rtol = TOL[policy]
    xp = array_namespace(got)
    got = np.asarray(to_numpy(xp.astype(got, xp.float32)), dtype=np.float64)  # bf16: no NumPy
    err = np.abs(got - ref)
    bound = atol * np.sqrt(k) + rtol * np.abs(ref)
    worst = float(np.max(err - bound))
    assert worst <= 0, f"{what}: error exceeds the {policy} tolerance by {worst:.3g}"


def _layers(kind, rng_seed=0):
    """The layer under test (float32) and its float64 twin with the same weights."""
    rng = xpnet.Generator(rng_seed)
    if kind == "linear":
        layer = xpnet.Linear(64, 16, rng=rng)
        twin = xpnet.Linear(64, 16, rng=xpnet.Generator(1), dtype="float64")
        shape, k_fwd, k_w = (8, 64), 64, 8
    else:
        layer = xpnet.Conv2d(3, 4, 3, padding=1, rng=rng)
        twin = xpnet.Conv2d(3, 4, 3, padding=1, rng=xpnet.Generator(1), dtype="float64")
        shape, k_fwd, k_w = (2, 3, 8, 8), 27, 2 * 64
    twin.load_state_dict({k: v.astype(np.float64) for k, v in layer.state_dict().items()})
    return layer, twin, shape, k_fwd, k_w


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("name,policy", SUPPORTED)
def test_layer_gradients_in_low_precision_match_float64(kind, name, policy):
    with _policy_backend(name, policy):
        layer, twin, shape, k_fwd, k_w = _layers(kind)
        g = np.random.default_rng(0)
        x = g.uniform(-1, 1, shape).astype(np.float32)
        w_before = to_numpy(layer.W.data).copy()
        y_ref = to_numpy(twin.forward(dev(x.astype(np.float64))))
        dout = g.uniform(-1, 1, y_ref.shape)
        dx_ref = to_numpy(twin.backward(dev(dout)))
        with precision.autocast(policy):
            y = layer.forward(dev(x))
            assert str(y.dtype).endswith(LOW[policy])  # computed in the low dtype
            dx = layer.backward(dev(dout.astype(np.float32)))
        # master weights untouched and float32; gradients handed back in float32
        assert str(layer.W.data.dtype).endswith("float32")
        np.testing.assert_array_equal(to_numpy(layer.W.data), w_before)
        for p in (layer.W, layer.b):
            assert str(p.grad.dtype).endswith("float32")
        assert str(dx.dtype).endswith("float32")  # the input's dtype, as torch.autocast
        _close(y, y_ref, policy, k_fwd, "output")
        _close(layer.W.grad, to_numpy(twin.W.grad), policy, k_w, "W.grad")
        _close(layer.b.grad, to_numpy(twin.b.grad), policy, k_w, "b.grad")
        _close(dx, dx_ref, policy, k_fwd, "input gradient")


def test_low_precision_error_is_measurable():
    """The tolerance is tight enough to tell float16 from float32: float16 rounding of the
    output differs from float64 by more than float32's would, but stays within bounds."""
    with _policy_backend("numpy", "mixed16"):
        layer, twin, shape, _, _ = _layers("linear")
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        ref = to_numpy(twin.forward(dev(x.astype(np.float64))))
        with xpnet.no_grad():
            full = to_numpy(layer.forward(dev(x)))
            with precision.autocast("mixed16"):
                half = to_numpy(layer.forward(dev(x)))
        assert np.max(np.abs(half - ref)) > 10 * np.max(np.abs(full - ref))


class _Float32Only(xpnet.Module):
    """A custom layer declaring that it must run in float32."""

    autocast = False

    def forward(self, x):
        self.seen = x.dtype
        return x * 2

    def backward(self, dout):
        self.seen_grad = dout.dtype
        return dout * 2


@pytest.mark.parametrize("name,policy", SUPPORTED)
def test_float32_layers_normalisation_and_the_loss_run_in_float32(name, policy):
    with _policy_backend(name, policy):
        xpnet.manual_seed(0)
        custom, bn = _Float32Only(), xpnet.BatchNorm(6)
        model = xpnet.Sequential(xpnet.Linear(5, 6), xpnet.ReLU(), custom, bn, xpnet.Linear(6, 3))
        opt = xpnet.Adam(model)
        x = dev(np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32))
        y = dev(np.arange(8) % 3)
        with precision.autocast(policy):
            out = train_step(model, xpnet.SoftmaxCrossEntropy(), opt, x, y)
        assert str(custom.seen).endswith("float32") and str(custom.seen_grad).endswith("float32")
        assert str(out.output.dtype).endswith("float32")  # the loss saw float32 logits
        assert str(out.loss.dtype).endswith("float32")
        for buf in model.buffers().values():  # BatchNorm's running statistics
            assert str(buf.dtype).endswith("float32")
        for slots in opt.state.values():  # optimizer state: float32, like the master weights
            for s in slots.values():
                assert str(s.dtype).endswith("float32")


@pytest.mark.parametrize("name,policy", [("array_api_strict", "mixed16"),
                                         ("array_api_strict", "bf16"), ("numpy", "bf16")])
def test_a_library_without_the_dtype_is_refused_by_name(name, policy):
    with _policy_backend(name, policy):
        model = xpnet.Sequential(xpnet.Linear(3, 2))
        with pytest.raises(PrecisionUnsupportedError, match=f"has no {LOW[policy]} dtype"):
            Trainer(model, xpnet.SGD(model), precision=policy)


def test_a_bad_policy_is_refused():
    model = xpnet.Sequential(xpnet.Linear(3, 2))
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(model, xpnet.SGD(model), precision="float16")


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_loss_scaling_skips_overflow_halves_then_grows(name):
    with _policy_backend(name, "mixed16"):
        xpnet.manual_seed(0)
        model = xpnet.Sequential(xpnet.Linear(4, 8), xpnet.ReLU(), xpnet.Linear(8, 3))
        opt = xpnet.SGD(model, lr=0.1)
        scaler = LossScaler(init_scale=2.0 ** 30, growth_interval=3)
        x = dev(np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))
        y = dev(np.arange(16) % 3)
        loss = xpnet.SoftmaxCrossEntropy()
        scales, params = [], []
        for _ in range(40):
            before = {k: v.copy() for k, v in model.state_dict().items()}
            with precision.autocast("mixed16"):
                train_step(model, loss, opt, x, y, scaler=scaler)
            scales.append(scaler.scale)
            params.append(all(np.array_equal(before[k], v)
                              for k, v in model.state_dict().items()))
        # 2**30 times a gradient of ~1e-2 overflows float16 (max 65504): skipped, halved,
        # and nothing changes on a skipped step
        first = params.index(False)  # the first step that updated the weights
        assert first >= 8 and all(params[:first])
        assert scales[:first] == [2.0 ** (29 - i) for i in range(first)]
        # the whole run follows the rule: skip -> halve, 3 finite in a row -> double
        expect, scale, good = [], 2.0 ** 30, 0
        for unchanged in params:
            if unchanged:
                scale, good = scale / 2, 0
            else:
                good += 1
                if good == 3:
                    scale, good = scale * 2, 0
            expect.append(scale)
        assert scales == expect
        assert scaler.skipped == sum(params) and opt.t == 40 - sum(params)
        grown = [b for a, b in zip(scales, scales[1:]) if b > a]
        assert grown  # it recovered: the scale grew again after finite steps


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_unscaled_gradients_equal_the_unscaled_run(name):
    """With a scale that does not overflow, the unscaled gradients are the float32 ones up to
    float16 rounding, and the scaler divides exactly (a power of two)."""
    with _policy_backend(name, "mixed16"):
        scaler = LossScaler(init_scale=2.0 ** 8)
        p = xpnet.Parameter(dev(np.zeros(3, np.float32)))
        p.grad = dev(np.array([256.0, 512.0, -1024.0], np.float32))
        assert scaler.unscale({"p": p})
        np.testing.assert_array_equal(to_numpy(p.grad), [1.0, 2.0, -4.0])
        p.grad = dev(np.array([1.0, np.inf, 0.0], np.float32))
        assert not scaler.unscale({"p": p}) and p.grad is None and scaler.scale == 2.0 ** 7


def _data(n=96, d=6, classes=3):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)


def _trainer(path=None):
    xpnet.manual_seed(0)
    model = xpnet.Sequential(xpnet.Linear(6, 16), xpnet.ReLU(), xpnet.Linear(16, 3))
    cbs = [LossScaling(LossScaler(init_scale=2.0 ** 20, growth_interval=4))]
    if path is not None:
        cbs.append(SaveCheckpoint(path))
    return Trainer(model, xpnet.Adam(model, lr=1e-2), batch_size=16, callbacks=cbs,
                   precision="mixed16")


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_resume_with_the_scaler_is_exact(name, tmp_path):
    with _policy_backend(name, "mixed16"):
        x, y = _data()
        whole = _trainer()
        whole.fit(x, y, 3)
        first = _trainer(tmp_path / "run.npz")
        first.fit(x, y, 1)
        rest = _trainer(tmp_path / "run.npz")
        rest.resume(tmp_path / "run.npz")
        assert rest.scaler.state_dict() == first.scaler.state_dict()
        rest.fit(x, y, 3)
        for k, v in whole.model.state_dict().items():
            np.testing.assert_array_equal(rest.model.state_dict()[k], v)
        assert rest.scaler.state_dict() == whole.scaler.state_dict()
        assert whole.scaler.skipped >= 1  # the run did skip steps: the state is not trivial
        recs = [(r["loss_scale"], r["skipped_steps"]) for r in whole.history.records]
        assert [(r["loss_scale"], r["skipped_steps"]) for r in rest.history.records] == recs
        assert whole.history.records[-1]["loss"] < whole.history.records[0]["loss"]


def test_a_resume_with_another_growth_interval_is_refused(tmp_path):
    x, y = _data()
    first = _trainer(tmp_path / "run.npz")
    first.fit(x, y, 1)
    other = _trainer()
    other.scaler.growth_interval = 5
    with pytest.raises(ValueError, match="growth_interval"):
        other.resume(tmp_path / "run.npz")


def test_mixed16_adds_loss_scaling_and_bf16_does_not():
    model = xpnet.Sequential(xpnet.Linear(3, 2))
    assert isinstance(Trainer(model, xpnet.SGD(model), precision="mixed16").scaler, LossScaler)
    with _policy_backend("torch", "bf16"):
        model = xpnet.Sequential(xpnet.Linear(3, 2))
        assert Trainer(model, xpnet.SGD(model), precision="bf16").scaler is None


@pytest.mark.parametrize("opt", [xpnet.Adam, xpnet.AdamW, xpnet.RMSProp, xpnet.AdaGrad])
@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_eps_optimizers_refuse_a_float16_model(name, opt):
    with _policy_backend(name, "mixed16"):
        model = xpnet.Sequential(xpnet.Linear(3, 2)).to_dtype("float16")
        with pytest.raises(TypeError, match="precision='mixed16'") as info:
            opt(model)
        assert "lr" not in str(info.value) and "learning rate" not in str(info.value)
        later = xpnet.Sequential(xpnet.Linear(3, 2))
        o = opt(later)
        later.to_dtype("float16")  # cast after construction: refused at the step
        for p in later.parameters().values():
            p.grad = p.data * 0
        with pytest.raises(TypeError, match="float16"):
            o.step()
