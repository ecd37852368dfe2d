"""Cross-backend equivalence: the same seed trains the same float64 CNN on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import OTHER_BACKEND_PARAMS, require_backend, use_backend

import xpnet

STEPS = 20


def _train(backend_name, optimizer):
    """20 float64 training steps of a small CNN with BatchNorm on fixed random data."""
    with use_backend(backend_name):
        rng = xpnet.Generator(0)
        model = xpnet.Sequential(
            xpnet.Conv2d(1, 4, 3, padding=1, dtype="float64", rng=rng),
            xpnet.BatchNorm(4, dtype="float64"), xpnet.ReLU(), xpnet.MaxPool2d(2),
            xpnet.Flatten(), xpnet.Linear(4 * 4 * 4, 3, dtype="float64", rng=rng))
        loss_fn = xpnet.SoftmaxCrossEntropy()
        opt = (xpnet.Adam(model, lr=0.01) if optimizer == "Adam"
               else xpnet.Momentum(model, lr=0.05, momentum=0.9, weight_decay=1e-3))
        data = np.random.default_rng(1)
        x = xpnet.to_device(data.standard_normal((8, 1, 8, 8)))
        t = xpnet.to_device(data.integers(0, 3, 8))
        losses = []
        for _ in range(STEPS):
            loss = loss_fn(model(x), t)
            model.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            losses.append(float(loss))
        return model.state_dict(), np.array(losses)


@pytest.mark.parametrize("optimizer", ["Adam", "Momentum"])
@pytest.mark.parametrize("other", OTHER_BACKEND_PARAMS)
def test_training_matches_numpy(monkeypatch, other, optimizer):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend(other)
    ref_state, ref_losses = _train("numpy", optimizer)
    state, losses = _train(other, optimizer)
    assert ref_losses[-1] < 0.8 * ref_losses[0]  # it trained: the comparison is not vacuous
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    assert set(state) == set(ref_state)
    for name in ref_state:
        assert state[name].dtype == np.float64, name
        np.testing.assert_allclose(state[name], ref_state[name], rtol=1e-5, atol=1e-5,
                                   err_msg=name)
