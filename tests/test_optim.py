"""Optimizers against closed-form updates after 1 and 10 steps (xpnet/optim.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dev, require_backend, to_np, use_backend

import xpnet
from xpnet.module import Parameter, StateDictError

HYPER = {
    "SGD": dict(lr=0.1),
    "Momentum": dict(lr=0.05, momentum=0.9),
    "Nesterov": dict(lr=0.05, momentum=0.8),
    "AdaGrad": dict(lr=0.1, eps=1e-10),
    "RMSProp": dict(lr=0.01, alpha=0.9, eps=1e-8),
    "Adam": dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8),
    "AdamW": dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8),
}
# weight_decay=0.0 is explicit because AdamW defaults to 0.01
DECAY = {"plain": dict(weight_decay=0.0), "l2": dict(weight_decay=0.1),
         "l1": dict(weight_decay=0.0, l1=0.05), "l2+l1": dict(weight_decay=0.1, l1=0.05)}
SHAPES = {"W": (3, 4), "b": (4,)}
STEPS = 10


def _initial():
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s) for n, s in SHAPES.items()}


def _grads(steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [{n: rng.standard_normal(s) for n, s in SHAPES.items()} for _ in range(steps)]


def _reference(kind, init, grads, lr, weight_decay=0.0, l1=0.0, **hp):
    """Closed-form updates in float64 NumPy, written out from the papers / torch.optim docs."""
    p = {n: v.copy() for n, v in init.items()}
    state = {n: {"a": np.zeros_like(v), "b": np.zeros_like(v)} for n, v in p.items()}
    for t, gs in enumerate(grads, start=1):
        for n in p:
            g, s, decayed = gs[n].copy(), state[n], p[n].ndim >= 2
            if decayed and weight_decay and kind != "AdamW":
                g = g + weight_decay * p[n]
            if decayed and l1:
                g = g + l1 * np.sign(p[n])
            if kind == "SGD":
                p[n] = p[n] - lr * g
            elif kind in ("Momentum", "Nesterov"):
                mu = hp["momentum"]
                s["a"] = mu * s["a"] + g
                p[n] = p[n] - lr * (g + mu * s["a"] if kind == "Nesterov" else s["a"])
            elif kind == "AdaGrad":
                s["a"] = s["a"] + g**2
                p[n] = p[n] - lr * g / (np.sqrt(s["a"]) + hp["eps"])
            elif kind == "RMSProp":
                a = hp["alpha"]
                s["a"] = a * s["a"] + (1 - a) * g**2
                p[n] = p[n] - lr * g / (np.sqrt(s["a"]) + hp["eps"])
            else:  # Adam, AdamW
                b1, b2 = hp["betas"]
                if kind == "AdamW" and decayed and weight_decay:
                    p[n] = p[n] * (1 - lr * weight_decay)
                s["a"] = b1 * s["a"] + (1 - b1) * g
                s["b"] = b2 * s["b"] + (1 - b2) * g**2
                m_hat, v_hat = s["a"] / (1 - b1**t), s["b"] / (1 - b2**t)
                p[n] = p[n] - lr * m_hat / (np.sqrt(v_hat) + hp["eps"])
    return p


def _params(init):
    return {n: Parameter(dev(v)) for n, v in init.items()}


def _run(opt, params, grads):
    for gs in grads:
        for n, p in params.items():
            p.grad = dev(gs[n])
        opt.step()


# ---------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("decay", list(DECAY))
@pytest.mark.parametrize("kind", list(HYPER))
def test_matches_closed_form_after_1_and_10_steps(backend, kind, decay):
    init, grads = _initial(), _grads()
    hp = {**HYPER[kind], **DECAY[decay]}
    params = _params(init)
    opt = getattr(xpnet, kind)(params, **hp)
    _run(opt, params, grads[:1])
    after1 = _reference(kind, init, grads[:1], **hp)
    for n, p in params.items():
        assert p.data.dtype == backend.xp.float64
        np.testing.assert_allclose(to_np(p.data), after1[n], rtol=1e-12, atol=1e-14, err_msg=n)
    _run(opt, params, grads[1:])
    assert opt.t == STEPS
    after10 = _reference(kind, init, grads, **hp)
    for n, p in params.items():
        assert not np.allclose(after10[n], init[n])
        np.testing.assert_allclose(to_np(p.data), after10[n], rtol=1e-11, atol=1e-13,
                                   err_msg=n)


@pytest.mark.parametrize("kind", list(HYPER))
def test_matches_torch_optim(backend, kind):
    """Independent check of the 'follows torch.optim' claim (decay on every parameter)."""
    torch = pytest.importorskip("torch")
    init, grads = _initial(), _grads()
    hp = {**HYPER[kind], "weight_decay": 0.1}
    params = _params(init)
    opt = getattr(xpnet, kind)(params, decay_filter=lambda name, p: True, **hp)
    _run(opt, params, grads)
    tparams = {n: torch.tensor(v, requires_grad=True) for n, v in init.items()}
    targs = dict(lr=hp["lr"], weight_decay=0.1)
    make = {
        "SGD": lambda ps: torch.optim.SGD(ps, **targs),
        "Momentum": lambda ps: torch.optim.SGD(ps, momentum=hp.get("momentum"), **targs),
        "Nesterov": lambda ps: torch.optim.SGD(ps, momentum=hp.get("momentum"), nesterov=True,
                                               **targs),
        "AdaGrad": lambda ps: torch.optim.Adagrad(ps, eps=hp.get("eps"), **targs),
        "RMSProp": lambda ps: torch.optim.RMSprop(ps, alpha=hp.get("alpha"), eps=hp.get("eps"),
                                                  **targs),
        "Adam": lambda ps: torch.optim.Adam(ps, betas=hp.get("betas"), eps=hp.get("eps"),
                                            **targs),
        "AdamW": lambda ps: torch.optim.AdamW(ps, betas=hp.get("betas"), eps=hp.get("eps"),
                                              **targs),
    }[kind]
    topt = make(list(tparams.values()))
    for gs in grads:
        for n, t in tparams.items():
            t.grad = torch.tensor(gs[n])
        topt.step()
    for n, p in params.items():
        np.testing.assert_allclose(to_np(p.data), tparams[n].detach().numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=n)


def test_adamw_default_weight_decay_is_decoupled(backend):
    init, grads = _initial(), _grads(3)
    params = _params(init)
    opt = xpnet.AdamW(params, lr=0.01)
    assert opt.weight_decay == 0.01
    _run(opt, params, grads)
    expected = _reference("AdamW", init, grads, lr=0.01, weight_decay=0.01, betas=(0.9, 0.999),
                          eps=1e-8)
    for n, p in params.items():
        np.testing.assert_allclose(to_np(p.data), expected[n], rtol=1e-12, err_msg=n)


# ---------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("decay", ["l2", "l1"])
def test_default_decay_skips_biases_and_batchnorm(backend, decay):
    model = xpnet.Sequential(xpnet.Linear(3, 4, dtype="float64"),
                             xpnet.BatchNorm(4, dtype="float64"))
    model[0].b.data = dev(np.full(4, 0.5))
    before = {n: to_np(p.data).copy() for n, p in model.parameters().items()}
    for p in model.parameters().values():
        p.grad = p.data * 0.0  # zero gradients: only decay can move a parameter
    xpnet.SGD(model, lr=0.1, **DECAY[decay]).step()
    after = {n: to_np(p.data) for n, p in model.parameters().items()}
    w = before["0.W"]
    expected_w = w * (1 - 0.1 * 0.1) if decay == "l2" else w - 0.1 * 0.05 * np.sign(w)
    np.testing.assert_allclose(after["0.W"], expected_w, rtol=1e-14)
    for n in ("0.b", "1.gamma", "1.beta"):
        np.testing.assert_array_equal(after[n], before[n], err_msg=f"{n} was decayed")


def test_custom_decay_filter_can_decay_everything(backend):
    params = _params({"b": np.full(3, 2.0)})
    params["b"].grad = dev(np.zeros(3))
    xpnet.SGD(params, lr=0.1, weight_decay=0.5, decay_filter=lambda n, p: True).step()
    np.testing.assert_allclose(to_np(params["b"].data), np.full(3, 2.0 * (1 - 0.05)))


# ---------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_all_gradients_together(backend):
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0], [0.0, 0.0]])}  # global norm 5
    params = {n: Parameter(dev(np.zeros_like(v))) for n, v in g.items()}
    params["c"] = Parameter(dev(np.zeros(2)))  # no gradient: ignored
    for n in g:
        params[n].grad = dev(g[n])
    total = xpnet.clip_grad_norm(params, 1.0)
    assert total.ndim == 0 and float(total) == pytest.approx(5.0, rel=1e-12)
    for n in g:
        np.testing.assert_allclose(to_np(params[n].grad), g[n] / (5.0 + 1e-6), rtol=1e-12)
    assert params["c"].grad is None
    norm = math.sqrt(sum(float(np.sum(to_np(params[n].grad) ** 2)) for n in g))
    assert norm == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone(backend):
    params = {"a": Parameter(dev(np.zeros(2)))}
    params["a"].grad = dev(np.array([0.3, 0.4]))
    assert float(xpnet.clip_grad_norm(params, 1.0)) == pytest.approx(0.5)
    np.testing.assert_array_equal(to_np(params["a"].grad), [0.3, 0.4])


def test_clip_norm_option_clips_before_the_update(backend):
    params = {"a": Parameter(dev(np.zeros(2)))}
    params["a"].grad = dev(np.array([30.0, 40.0]))
    xpnet.SGD(params, lr=1.0, clip_norm=5.0).step()
    np.testing.assert_allclose(to_np(params["a"].data), [-3.0, -4.0], rtol=1e-6)


def test_clip_grad_norm_errors(backend):
    params = {"a": Parameter(dev(np.zeros(2)))}
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        xpnet.clip_grad_norm(params, 1.0)
    params["a"].grad = dev(np.ones(2))
    with pytest.raises(ValueError, match="max_norm.*0"):
        xpnet.clip_grad_norm(params, 0.0)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw,match", [
    (dict(lr=-0.1), "lr must be a finite number >= 0, got -0.1"),
    (dict(lr=float("nan")), "lr.*nan"),
    (dict(lr="0.1"), "lr.*'0.1'"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay.*-1.0"),
    (dict(lr=0.1, l1=-0.5), "l1.*-0.5"),
    (dict(lr=0.1, clip_norm=0.0), "clip_norm"),
], ids=["lr-negative", "lr-nan", "lr-str", "wd-negative", "l1-negative", "clip-zero"])
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_bad_hyperparameters_name_the_argument(kind, kw, match):
    params = {"w": Parameter(np.zeros((2, 2)))}
    with pytest.raises(ValueError, match=match):
        getattr(xpnet, kind)(params, **kw)


@pytest.mark.parametrize("make,match", [
    (lambda ps: xpnet.Momentum(ps, momentum=1.0), "momentum"),
    (lambda ps: xpnet.Nesterov(ps, momentum=-0.1), "momentum"),
    (lambda ps: xpnet.RMSProp(ps, alpha=1.0), "alpha"),
    (lambda ps: xpnet.Adam(ps, betas=(1.0, 0.9)), "betas"),
    (lambda ps: xpnet.AdamW(ps, betas=(0.9, -0.1)), "betas"),
    (lambda ps: xpnet.SGD({}), "no parameters"),
], ids=["momentum", "nesterov", "rmsprop-alpha", "adam-betas", "adamw-betas", "empty"])
def test_bad_optimizer_specific_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make({"w": Parameter(np.zeros((2, 2)))})


@pytest.mark.parametrize("kind", list(HYPER))
def test_step_without_gradients_is_a_clear_error(backend, kind):
    params = _params(_initial())
    params["W"].grad = dev(np.ones(SHAPES["W"]))
    opt = getattr(xpnet, kind)(params)
    with pytest.raises(RuntimeError, match=r"\['b'\].*backward\(\)"):
        opt.step()
    assert opt.t == 0


def test_optimizer_accepts_a_module(backend):
    model = xpnet.Linear(2, 3)
    opt = xpnet.SGD(model, lr=0.5)
    assert list(opt.params) == ["W", "b"]
    assert opt.params["W"] is model.W


# ---------------------------------------------------------------------- state dict
def _checkpoint_run(kind, save_backend, load_backend):
    """Train 4 steps, checkpoint model + optimizer, train 6 more; a fresh model loaded from the
    checkpoint must reproduce those 6 steps exactly."""
    grads = [{"W": g["W"], "b": g["b"]} for g in _grads()]
    hp = {**HYPER[kind], **DECAY["l2+l1"]}
    with use_backend(save_backend):
        model = xpnet.Linear(3, 4, dtype="float64", rng=xpnet.Generator(1))
        opt = getattr(xpnet, kind)(model, **hp)
        _run(opt, model.parameters(), grads[:4])
        opt.lr *= 0.5  # as a schedule would
        model_state, opt_state = model.state_dict(), opt.state_dict()
        _run(opt, model.parameters(), grads[4:])
        expected = {n: to_np(p.data).copy() for n, p in model.parameters().items()}
    with use_backend(load_backend) as b:
        fresh = xpnet.Linear(3, 4, dtype="float64", rng=xpnet.Generator(2))
        fresh.load_state_dict(model_state)
        fresh_opt = getattr(xpnet, kind)(fresh, **hp)
        fresh_opt.load_state_dict(opt_state)
        assert fresh_opt.t == 4 and fresh_opt.lr == opt.lr
        for slots in fresh_opt.state.values():
            for v in slots.values():
                assert v.dtype == b.xp.float64
        _run(fresh_opt, fresh.parameters(), grads[4:])
        for n, p in fresh.parameters().items():
            np.testing.assert_allclose(to_np(p.data), expected[n], rtol=1e-12, atol=1e-14,
                                       err_msg=n)


@pytest.mark.parametrize("kind", list(HYPER))
def test_state_dict_round_trip_continues_identically(backend, kind):
    _checkpoint_run(kind, backend.name, backend.name)


@pytest.mark.parametrize("kind", ["Momentum", "Adam"])
def test_state_dict_saved_on_numpy_loads_on_torch(monkeypatch, kind):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("torch")
    _checkpoint_run(kind, "numpy", "torch")


def test_state_dict_is_a_host_snapshot(backend):
    params = _params(_initial())
    opt = xpnet.Adam(params)
    _run(opt, params, _grads(2))
    state = opt.state_dict()
    assert state["t"] == 2 and state["lr"] == 1e-3
    assert set(state["state"]) == {"W", "b"} and set(state["state"]["W"]) == {"m", "v"}
    assert all(isinstance(v, np.ndarray) for s in state["state"].values() for v in s.values())
    saved = {n: {k: v.copy() for k, v in s.items()} for n, s in state["state"].items()}
    _run(opt, params, _grads(2, seed=5))  # later steps must not change the saved snapshot
    for n, slots in saved.items():
        for k, v in slots.items():
            np.testing.assert_array_equal(state["state"][n][k], v, err_msg=f"{n}/{k}")


def test_load_state_dict_errors(backend):
    params = _params(_initial())
    opt = xpnet.Momentum(params)
    _run(opt, params, _grads(1))
    state = opt.state_dict()
    other = xpnet.Momentum({"W": Parameter(dev(np.zeros((3, 4))))})
    with pytest.raises(StateDictError, match="'b'"):
        other.load_state_dict(state)
    wrong = xpnet.Momentum({"W": Parameter(dev(np.zeros((4, 3)))),
                            "b": Parameter(dev(np.zeros(4)))})
    with pytest.raises(ValueError, match=r"W/v.*\(3, 4\).*\(4, 3\)"):
        wrong.load_state_dict(state)


def test_check_state_dict_refuses_another_optimizer_or_settings_and_changes_nothing(backend):
    params = _params(_initial())
    opt = xpnet.Adam(params, lr=1e-2)
    _run(opt, params, _grads(2))
    state = opt.state_dict()
    assert state["class"] == "Adam" and state["settings"]["beta1"] == 0.9
    other = xpnet.Momentum(params, lr=1e-2)
    with pytest.raises(StateDictError, match="saved by the optimizer Adam, this one is "
                                             "Momentum.*resume with Adam"):
        other.load_state_dict(state)
    assert other.t == 0 and other.state == {}
    eps = xpnet.Adam(params, lr=1e-2, eps=1e-6)
    with pytest.raises(StateDictError, match="saved with eps=1e-08, this one has eps=1e-06"):
        eps.load_state_dict(state)
    same = xpnet.Adam(params, lr=1e-2)
    for bad, match in (({**state, "state": 3}, "its state a dict"),
                       ({**state, "t": -1}, "t must be a non-negative integer"),
                       ({k: v for k, v in state.items() if k != "class"}, "must be a dict with")):
        with pytest.raises(ValueError, match=match):
            same.load_state_dict(bad)
    assert eps.t == same.t == 0 and eps.state == same.state == {}
