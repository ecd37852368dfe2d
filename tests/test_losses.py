"""SoftmaxCrossEntropy and MSE (xpnet/losses.py): gradients, values, stability, errors."""

from __future__ import annotations

import re

import array_api_compat
import numpy as np
import pytest
from conftest import ATOL, RTOL, dev, require_backend, to_np, use_backend

import xpnet
from xpnet.gradcheck import check_loss
from xpnet.train import Trainer


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _ref_softmax_ce(z, onehot):
    """Float64 NumPy reference: mean over the batch of logsumexp(z) - <onehot, z>."""
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - (onehot * z).sum(axis=1)))


def _onehot(labels, c):
    return np.eye(c)[labels]


LABELS = np.array([0, 3, 1, 3, 2])


# ---------------------------------------------------------------------- gradient checks
def test_softmax_ce_gradcheck_integer_labels(backend):
    analytic, numeric = check_loss(xpnet.SoftmaxCrossEntropy(), dev(_rand((5, 4))), dev(LABELS))
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


def test_softmax_ce_gradcheck_one_hot_targets(backend):
    analytic, numeric = check_loss(xpnet.SoftmaxCrossEntropy(), dev(_rand((5, 4))),
                                   dev(_onehot(LABELS, 4)))
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


def test_softmax_ce_gradcheck_soft_targets(backend):
    p = np.abs(_rand((3, 4), seed=1))
    analytic, numeric = check_loss(xpnet.SoftmaxCrossEntropy(), dev(_rand((3, 4))),
                                   dev(p / p.sum(axis=1, keepdims=True)))
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5], ids=["sum0.3", "sum1", "sum2.5"])
def test_softmax_ce_gradcheck_rows_not_summing_to_one(backend, scale):
    """Soft targets whose rows sum to s != 1 (hand-made label smoothing, weighted examples):
    backward is the exact gradient (s * softmax - t) / N of the loss forward reports."""
    p = np.abs(_rand((3, 4), seed=2)) + 0.1
    t = scale * p / p.sum(axis=1, keepdims=True)
    t[1] *= 1.7  # rows with different sums
    analytic, numeric = check_loss(xpnet.SoftmaxCrossEntropy(), dev(_rand((3, 4))), dev(t))
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)
    z = _rand((3, 4))
    prob = np.exp(z - z.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    loss = xpnet.SoftmaxCrossEntropy()
    loss.forward(dev(z), dev(t))
    expected = (t.sum(axis=1, keepdims=True) * prob - t) / 3
    np.testing.assert_allclose(to_np(loss.backward()), expected, rtol=1e-12, atol=1e-15)
    if scale != 1.0:  # the old (softmax - t) / N differs: this test can fail
        assert not np.allclose(to_np(loss.backward()), (prob - t) / 3)


def test_loss_backward_before_forward_is_refused():
    for loss in (xpnet.SoftmaxCrossEntropy(), xpnet.MSE()):
        with pytest.raises(RuntimeError, match="call forward first"):
            loss.backward()


def test_mse_gradcheck(backend):
    analytic, numeric = check_loss(xpnet.MSE(), dev(_rand((4, 3))), dev(_rand((4, 3), seed=1)))
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- values
def test_softmax_ce_value_matches_numpy_reference(backend):
    z = _rand((5, 4)) * 3
    loss = xpnet.SoftmaxCrossEntropy()
    value = loss(dev(z), dev(LABELS))
    assert value.ndim == 0 and array_api_compat.device(value) == backend.device  # no host sync
    assert float(value) == pytest.approx(_ref_softmax_ce(z, _onehot(LABELS, 4)), rel=1e-12)
    one_hot_value = loss(dev(z), dev(_onehot(LABELS, 4)))
    assert float(one_hot_value) == pytest.approx(float(value), rel=1e-12)


def test_softmax_ce_backward_is_softmax_minus_target(backend):
    z = _rand((5, 4))
    loss = xpnet.SoftmaxCrossEntropy()
    loss(dev(z), dev(LABELS))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = (p - _onehot(LABELS, 4)) / 5
    np.testing.assert_allclose(to_np(loss.backward()), expected, rtol=1e-12)
    np.testing.assert_allclose(to_np(loss.backward(2.0)), 2 * expected, rtol=1e-12)


def test_softmax_ce_is_stable_for_huge_logits(backend):
    z = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0], [3000.0, -3000.0, 0.0]])
    labels = np.array([0, 1, 2])
    loss = xpnet.SoftmaxCrossEntropy()
    value = float(loss(dev(z), dev(labels)))
    assert np.isfinite(value)
    assert value == pytest.approx(_ref_softmax_ce(z, _onehot(labels, 3)), rel=1e-12)
    assert np.all(np.isfinite(to_np(loss.backward())))
    value32 = float(loss(dev(z, dtype="float32"), dev(labels)))
    assert np.isfinite(value32) and value32 == pytest.approx(value, rel=1e-6)


def test_mse_value_and_backward_match_numpy(backend):
    y, t = _rand((4, 3)), _rand((4, 3), seed=1)
    loss = xpnet.MSE()
    value = loss(dev(y), dev(t))
    assert value.ndim == 0
    assert float(value) == pytest.approx(np.mean((y - t) ** 2), rel=1e-12)
    np.testing.assert_allclose(to_np(loss.backward()), 2 * (y - t) / 12, rtol=1e-12)


def test_mse_casts_the_target_to_the_prediction_dtype(backend):
    y = dev(_rand((2, 2)), dtype="float32")
    value = xpnet.MSE()(y, dev(np.zeros((2, 2))))  # float64 target
    assert value.dtype == backend.xp.float32


# ---------------------------------------------------------------------- errors
def test_float_labels_are_refused(backend):
    with pytest.raises(TypeError, match="integer class labels.*float64"):
        xpnet.SoftmaxCrossEntropy()(dev(_rand((3, 4))), dev(np.array([0.0, 1.0, 2.0])))


@pytest.mark.parametrize("bad", [-1, 4, 10])
def test_out_of_range_labels_name_the_range(backend, bad):
    labels = np.array([0, bad, 1])
    with pytest.raises(ValueError) as info:
        xpnet.SoftmaxCrossEntropy()(dev(_rand((3, 4))), dev(labels))
    msg = str(info.value)
    assert "[0, 3]" in msg and "4 classes" in msg
    assert f"from {labels.min()} to {labels.max()}" in msg


def test_label_count_must_match_the_batch(backend):
    with pytest.raises(ValueError, match=r"got 4 labels.*batch of 3.*\(3,\)"):
        xpnet.SoftmaxCrossEntropy()(dev(_rand((3, 4))), dev(np.array([0, 1, 2, 3])))


@pytest.mark.parametrize("shape", [(3, 5), (3, 4, 1), (4, 4)])
def test_wrong_target_shape_is_refused(backend, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        xpnet.SoftmaxCrossEntropy()(dev(_rand((3, 4))), dev(np.zeros(shape)))


def test_integer_one_hot_targets_are_refused(backend):
    with pytest.raises(ValueError, match=r"expected integer labels \(3,\) or float one-hot"):
        xpnet.SoftmaxCrossEntropy()(dev(_rand((3, 4))), dev(np.eye(4, dtype=np.int64)[:3]))


def test_logits_must_be_2d_floating_arrays(backend):
    loss = xpnet.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"\(3, 4, 1\).*\(N, C\)"):
        loss(dev(_rand((3, 4, 1))), dev(np.array([0, 1, 2])))
    with pytest.raises(TypeError, match="floating"):
        loss(dev(np.zeros((3, 4), dtype=np.int64)), dev(np.array([0, 1, 2])))
    with pytest.raises(TypeError, match="target must be an array"):
        loss(dev(_rand((3, 4))), [0, 1, 2])


def test_check_range_false_skips_only_the_range_check(backend):
    z = dev(_rand((3, 4)))
    fast = xpnet.SoftmaxCrossEntropy(check_range=False)
    labels = dev(np.array([0, 3, 1]))
    assert float(fast(z, labels)) == float(xpnet.SoftmaxCrossEntropy()(z, labels))
    with pytest.raises(TypeError, match="integer class labels"):
        fast(z, dev(np.array([0.0, 1.0, 2.0])))
    with pytest.raises(ValueError, match="got 2 labels"):
        fast(z, dev(np.array([0, 1])))
    try:  # out of range: no validation error (the backend may still fail on its own)
        fast(z, dev(np.array([0, 9, 1])))
    except ValueError as exc:
        assert "must lie in" not in str(exc)
    except (IndexError, RuntimeError):
        pass


@pytest.mark.parametrize("n_out", [1, 4], ids=["one-output", "four-outputs"])
def test_real_valued_targets_are_refused_naming_mse(backend, n_out):
    """(N, 1) regression targets given to cross-entropy: refused from shapes alone (a
    single-output model trains to loss 0 with it), and the message names MSE."""
    t = dev(_rand((3, 1), seed=4))
    for loss in (xpnet.SoftmaxCrossEntropy(), xpnet.SoftmaxCrossEntropy(check_range=False)):
        with pytest.raises(ValueError) as info:
            loss(dev(_rand((3, n_out))), t)
        msg = str(info.value)
        assert "use MSE" in msg and "xpnet.MSE()" in msg, msg
        assert ("single output" in msg) == (n_out == 1), msg


def test_single_output_is_refused_whatever_the_target(backend):
    with pytest.raises(ValueError, match=r"shape \(3, 1\), a single output.*use MSE"):
        xpnet.SoftmaxCrossEntropy()(dev(_rand((3, 1))), dev(np.array([0, 0, 0])))


@pytest.mark.parametrize("row, says", [
    ([0.5, -0.25, 0.75, 0.0], "row 1 holds -0.25"),
    ([0.0, 0.0, 0.0, 0.0], "row 1 sums to 0"),
    ([0.5, np.nan, 0.5, 0.0], "row 1 holds NaN or inf"),
    ([0.5, np.inf, 0.5, 0.0], "row 1 holds NaN or inf"),
], ids=["negative", "zero-sum", "nan", "inf"])
def test_soft_targets_must_be_non_negative_rows_with_positive_sums(backend, row, says):
    t = np.full((3, 4), 0.25)
    t[1] = row
    z = dev(_rand((3, 4)))
    for loss in (xpnet.SoftmaxCrossEntropy(), xpnet.SoftmaxCrossEntropy(check_range=False)):
        with pytest.raises(ValueError) as info:
            loss(z, dev(t))
        msg = str(info.value)
        assert msg.startswith(f"SoftmaxCrossEntropy target: {says} (1 of 3 rows"), msg
        assert "non-negative" in msg and "use MSE" in msg


def test_soft_target_values_cost_a_sync_only_on_the_first_call_without_check_range(backend):
    """check_range=False (the Trainer) reads soft-target values once: valid later batches need
    no host read; check_range=True reads them on every call."""
    z = dev(_rand((3, 4)))
    good, bad = dev(np.full((3, 4), 0.25)), dev(np.full((3, 4), -0.25))
    fast = xpnet.SoftmaxCrossEntropy(check_range=False)
    fast(z, good)
    assert float(fast(z, bad)) < 0  # not read again: the documented cost trade
    with pytest.raises(ValueError, match="holds -0.25"):
        xpnet.SoftmaxCrossEntropy(check_range=False)(z, bad)
    checked = xpnet.SoftmaxCrossEntropy()
    checked(z, good)
    with pytest.raises(ValueError, match="holds -0.25"):
        checked(z, bad)


def test_empty_batch_is_refused_not_nan(backend):
    with pytest.raises(ValueError, match=r"empty batch \(logits of shape \(0, 4\)\)"):
        xpnet.SoftmaxCrossEntropy()(dev(np.zeros((0, 4))), dev(np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match=r"empty batch \(logits"):
        xpnet.SoftmaxCrossEntropy(check_range=False)(dev(np.zeros((0, 4))),
                                                     dev(np.zeros((0, 4))))
    with pytest.raises(ValueError, match=r"MSE: empty batch \(predictions of shape \(0, 1\)\)"):
        xpnet.MSE()(dev(np.zeros((0, 1))), dev(np.zeros((0, 1))))


def test_trainer_with_default_loss_refuses_regression_targets(backend):
    """The learner's case: real-valued (N, 1) targets and a one-output model, default loss."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    model = xpnet.Sequential(xpnet.Linear(3, 1))
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=8,
                      callbacks=[xpnet.train.Progress(enabled=False)])
    with pytest.raises(ValueError, match="single output.*use MSE"):
        trainer.fit(x, y, epochs=1)


def test_mse_wrong_target_shape_names_both(backend):
    with pytest.raises(ValueError, match=r"MSE.*\(3, 2\).*\(2, 3\)"):
        xpnet.MSE()(dev(_rand((2, 3))), dev(_rand((3, 2))))


def test_target_on_another_namespace_is_refused(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("torch")
    with use_backend("torch"):
        logits = xpnet.to_device(_rand((3, 4)))
        with pytest.raises(xpnet.DeviceMismatchError, match="numpy.*torch|torch.*numpy"):
            xpnet.SoftmaxCrossEntropy()(logits, np.array([0, 1, 2]))
        with pytest.raises(xpnet.DeviceMismatchError):
            xpnet.MSE()(logits, _rand((3, 4)))
