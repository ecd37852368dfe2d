"""Learning-rate schedules (xpnet/schedules.py): values per epoch and state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dev, to_np

import xpnet
from xpnet.module import Parameter
from xpnet.train import LRSchedule


def _opt(lr=0.1):
    return xpnet.SGD({"w": Parameter(np.zeros((2, 2)))}, lr=lr)


def _rates(sched, epochs):
    return [sched.step() for _ in range(epochs)]


def test_step_lr_values_per_epoch():
    opt = _opt(0.1)
    sched = xpnet.StepLR(opt, step_size=3, gamma=0.5)
    rates = _rates(sched, 8)
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025], rel=1e-12)
    assert opt.lr == rates[-1] and sched.epoch == 8


def test_exponential_lr_values_per_epoch():
    opt = _opt(0.2)
    rates = _rates(xpnet.ExponentialLR(opt, gamma=0.9), 5)
    assert rates == pytest.approx([0.18, 0.162, 0.1458, 0.13122, 0.118098], rel=1e-12)
    assert opt.lr == pytest.approx(0.118098, rel=1e-12)


def test_cosine_lr_values_per_epoch_and_floor():
    opt = _opt(0.1)
    rates = _rates(xpnet.CosineLR(opt, total=4, min_lr=0.01), 6)
    half_way = 0.01 + 0.045 * (1 + math.cos(math.pi / 4))
    quarter = 0.01 + 0.045 * (1 + math.cos(3 * math.pi / 4))
    assert rates == pytest.approx([half_way, 0.055, quarter, 0.01, 0.01, 0.01], rel=1e-12)
    assert rates == sorted(rates, reverse=True)


def test_cosine_lr_defaults_to_zero_floor():
    rates = _rates(xpnet.CosineLR(_opt(1.0), total=2), 3)
    assert rates == pytest.approx([0.5, 0.0, 0.0], abs=1e-15)


@pytest.mark.parametrize("make", [
    lambda o: xpnet.StepLR(o, step_size=2, gamma=0.3),
    lambda o: xpnet.ExponentialLR(o, gamma=0.7),
    lambda o: xpnet.CosineLR(o, total=6, min_lr=0.001),
], ids=["StepLR", "ExponentialLR", "CosineLR"])
def test_state_dict_round_trip(make):
    opt_a = _opt(0.1)
    sched_a = make(opt_a)
    _rates(sched_a, 3)
    state = sched_a.state_dict()
    assert state == {"epoch": 3, "base_lr": 0.1, **sched_a.config()}
    opt_b = _opt(0.5)  # a different starting rate: the state must win
    sched_b = make(opt_b)
    sched_b.load_state_dict(state)
    assert opt_b.lr == pytest.approx(opt_a.lr, rel=1e-15)
    assert _rates(sched_b, 4) == pytest.approx(_rates(sched_a, 4), rel=1e-15)


def test_state_of_another_shape_is_refused():
    """A 600-step cosine's state must not silently continue a 1200-step one."""
    saved = xpnet.CosineLR(_opt(0.1), total=600, warmup=60, per_step=True)
    _rates(saved, 10)
    longer = xpnet.CosineLR(_opt(0.1), total=1200, warmup=60, per_step=True)
    with pytest.raises(ValueError, match=r"total=600, this one total=1200"):
        longer.load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match=r"per_step=True, this one per_step=False"):
        xpnet.CosineLR(_opt(0.1), total=600, warmup=60).load_state_dict(
            saved.state_dict())
    with pytest.raises(ValueError, match=r"gamma=0.5, this one gamma=0.7"):
        xpnet.StepLR(_opt(), 2, gamma=0.7).load_state_dict(
            xpnet.StepLR(_opt(), 2, gamma=0.5).state_dict())
    with pytest.raises(ValueError, match=r"schedule='StepLR', this one schedule='ExponentialLR'"):
        xpnet.ExponentialLR(_opt(), gamma=0.5).load_state_dict(
            xpnet.StepLR(_opt(), 2, gamma=0.5).state_dict())


def test_an_incomplete_state_is_refused_before_anything_changes():
    """A state without the schedule's settings (here: no per_step) fits no schedule."""
    partial = {"epoch": 2, "base_lr": 0.01}
    opt = _opt(0.1)
    sched = xpnet.CosineLR(opt, 4)
    with pytest.raises(ValueError, match="schedule=None, this one schedule=.CosineLR."):
        sched.load_state_dict(partial)
    assert sched.epoch == 0 and sched.base_lr == 0.1 and opt.lr == 0.1
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        sched.check_state_dict({**sched.state_dict(), "epoch": -1})


@pytest.mark.parametrize("make,match", [
    (lambda o: xpnet.StepLR(o, step_size=0), "step_size.*0"),
    (lambda o: xpnet.ExponentialLR(o, gamma=0.0), "gamma.*0"),
    (lambda o: xpnet.CosineLR(o, total=-1), "total must be a positive integer, got -1"),
], ids=["StepLR", "ExponentialLR", "CosineLR"])
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_opt())


def test_schedule_drives_the_optimizer_update(backend):
    params = {"w": Parameter(dev(np.zeros(2)))}
    opt = xpnet.SGD(params, lr=1.0)
    sched = xpnet.StepLR(opt, step_size=1, gamma=0.5)
    for expected in ([-1.0, -1.0], [-1.5, -1.5], [-1.75, -1.75]):
        params["w"].grad = dev(np.ones(2))
        opt.step()
        np.testing.assert_allclose(to_np(params["w"].data), expected, rtol=1e-15)
        sched.step()


def test_cosine_warmup_values_and_per_step_in_trainer():
    from xpnet.train import Trainer

    opt = _opt(1.0)
    sched = xpnet.CosineLR(opt, total=10, warmup=4, per_step=True)
    assert opt.lr == pytest.approx(0.25)  # the warm-up starts at base / warmup
    rates = _rates(sched, 10)
    assert rates[:3] == pytest.approx([0.5, 0.75, 1.0])
    assert rates[3] == pytest.approx(1.0) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))  # decays after the warm-up

    model = xpnet.Sequential(xpnet.Linear(2, 3))
    optimizer = xpnet.SGD(model, lr=0.1)
    sched = xpnet.CosineLR(optimizer, total=8, warmup=2, per_step=True)
    x = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    y = np.arange(40) % 3
    Trainer(model, optimizer, batch_size=10, callbacks=[LRSchedule(sched)]).fit(x, y, 2)
    assert sched.epoch == 8  # 4 batches x 2 epochs: stepped once per optimizer step
    assert optimizer.lr == pytest.approx(0.0, abs=1e-12)


def test_cosine_takes_its_length_as_total_only():
    with pytest.raises(TypeError, match="total"):
        xpnet.CosineLR(_opt(0.1))
    with pytest.raises(TypeError, match="total_epochs"):
        xpnet.CosineLR(_opt(0.1), total_epochs=600)
