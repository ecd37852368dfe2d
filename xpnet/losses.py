"""Loss functions: SoftmaxCrossEntropy (fused, log-sum-exp stable) and MSE.

A loss's ``forward`` returns a 0-d array on the device; ``backward()`` returns the gradient with
respect to the predictions for a mean-reduced loss.

Checks run on every call, so they are split by cost: shapes and dtypes (free, host metadata) are
always checked, which refuses an empty batch, a single-output model and real-valued targets
given to cross-entropy. Target *values* (label range, soft rows non-negative with a positive sum)
need a device-to-host read; with ``check_range=True`` (the default) they are checked on every
call, with ``check_range=False`` (what the Trainer uses, having checked its labels once) labels
are not read and soft targets only on the first call, so a training step stays free of syncs.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import array_api_extra as xpx
from array_api_compat import array_namespace

from .backend import check_same_device

__all__ = ["MSE", "SoftmaxCrossEntropy", "check_labels", "check_soft_targets"]

# what every refusal of real-valued targets by cross-entropy adds
_USE_MSE = ("for real-valued (regression) targets use MSE: Trainer(..., loss=xpnet.MSE()) with "
            "targets shaped like the model's output")

Array = Any


def _check_logits(owner: str, y: Any) -> Any:
    if not array_api_compat.is_array_api_obj(y):
        raise TypeError(f"{owner}: predictions must be an array, got {type(y).__name__}")
    xp = array_namespace(y)
    if not xp.isdtype(y.dtype, "real floating"):
        raise TypeError(f"{owner}: predictions have dtype {y.dtype}; expected a floating dtype")
    return xp


def check_labels(xp: Any, t: Array, n: int, num_classes: int, owner: str = "labels",
                 check_range: bool = True) -> None:
    """Raise a clear error unless t is (n,) integer labels in [0, num_classes).

    The range check reads two values back from the device; ``check_range=False`` skips it.
    """
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(f"{owner}: integer class labels expected, got dtype {t.dtype}; "
                        f"{_USE_MSE}")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{owner}: got {t.shape[0] if t.ndim else 0} labels of shape "
                         f"{tuple(t.shape)} for a batch of {n}; expected shape ({n},)")
    if check_range and n and (bool(xp.any(t < 0)) or bool(xp.any(t >= num_classes))):
        lo, hi = int(xp.min(t)), int(xp.max(t))
        raise ValueError(f"{owner}: labels must lie in [0, {num_classes - 1}] for "
                         f"{num_classes} classes; got values from {lo} to {hi}")


def check_soft_targets(xp: Any, t: Array, owner: str = "soft targets") -> None:
    """Raise a clear error unless every row of the (N, C) float targets t is finite,
    non-negative and sums to a positive number (probabilities, one-hot, label smoothing).

    One device-to-host read when t is valid; a few more to name the first bad row otherwise.
    """
    entries_ok = xp.all(xp.isfinite(t) & (t >= 0), axis=1)
    rows_ok = entries_ok & (xp.sum(t, axis=1) > 0)
    if bool(xp.all(rows_ok)):
        return
    first = int(xp.argmax(xp.astype(~rows_ok, xp.int32)))
    row = t[first, :]
    bad = int(xp.sum(xp.astype(~rows_ok, xp.int32)))
    if bool(entries_ok[first]):
        what = f"sums to {float(xp.sum(row)):g}"
    else:
        lowest = float(xp.min(xp.where(xp.isfinite(row), row, xp.full_like(row, -math.inf))))
        what = f"holds {lowest:g}" if lowest > -math.inf else "holds NaN or inf"
    raise ValueError(f"{owner}: row {first} {what} ({bad} of {t.shape[0]} rows are not "
                     "valid); soft targets must be finite and non-negative, each row summing to "
                     f"a positive number; {_USE_MSE}")


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels (N,) or one-hot /
    probability targets (N, C). Fuses softmax and log: ``loss = logsumexp(z) - z[t]``.

    ``check_range`` validates target values (labels in range; soft rows non-negative with a
    positive sum), which costs one device-to-host sync per call; the Trainer validates its
    labels once and turns it off, and then soft targets are checked on the first call only.
    Shapes and dtypes are always checked: at least one example, at least two classes, and
    targets that are labels or soft rows (real-valued targets are refused, naming MSE).
    """

    def __init__(self, check_range: bool = True):
        if not isinstance(check_range, bool):
            raise TypeError(f"SoftmaxCrossEntropy: check_range must be True or False, "
                            f"got {check_range!r}")
        self.check_range = check_range
        # (softmax, targets, target row sums or None, batch size), set by forward
        self._cache: tuple[Array, Array, Array | None, int] | None = None
        self._soft_checked = False

    def __call__(self, logits: Array, target: Array) -> Array:
        return self.forward(logits, target)

    def forward(self, logits: Array, target: Array) -> Array:
        owner = "SoftmaxCrossEntropy"
        xp = _check_logits(owner, logits)
        if logits.ndim != 2:
            raise ValueError(f"{owner}: logits have shape {tuple(logits.shape)}; "
                             "expected (N, C)")
        if not array_api_compat.is_array_api_obj(target):
            raise TypeError(f"{owner}: target must be an array, got {type(target).__name__}")
        check_same_device(logits, target, "logits", "target")
        n, c = logits.shape
        if n == 0:
            raise ValueError(f"{owner}: empty batch (logits of shape {tuple(logits.shape)}); the "
                             "mean loss over no examples is undefined: expected at least one "
                             "example")
        if c < 2:
            raise ValueError(f"{owner}: logits have shape {tuple(logits.shape)}, a single "
                             "output: softmax over one class is always 1, so the loss is 0 "
                             "and nothing is learned. Give the model one output per class (2 "
                             f"for a yes/no task); {_USE_MSE}")
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        logp = shifted - xp.log(s)
        row_sums = None
        if target.ndim == 1:
            check_labels(xp, target, n, c, f"{owner} target", self.check_range)
            onehot = xpx.one_hot(target, c, dtype=logits.dtype, xp=xp)
        elif tuple(target.shape) == (n, c) and xp.isdtype(target.dtype, "real floating"):
            if self.check_range or not self._soft_checked:
                check_soft_targets(xp, target, f"{owner} target")
                self._soft_checked = True
            onehot = xp.astype(target, logits.dtype)
            # soft targets need not sum to 1 per row (label smoothing done by hand, weighted
            # examples): keep the row sums so backward is the exact gradient of this loss
            row_sums = xp.sum(onehot, axis=1, keepdims=True)
        else:
            raise ValueError(f"{owner}: target has shape {tuple(target.shape)} and dtype "
                             f"{target.dtype}; expected integer labels ({n},) or float "
                             f"one-hot ({n}, {c}) (soft rows: non-negative, positive sums); "
                             f"{_USE_MSE}")
        self._cache = (e / s, onehot, row_sums, n)
        return -xp.sum(onehot * logp) / n

    def backward(self, dloss: float = 1.0) -> Array:
        """Gradient w.r.t. the logits: ``(s * softmax - t) / N`` where ``s`` is each target
        row's sum (1 for integer labels and for probability rows)."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward: call forward first")
        prob, onehot, row_sums, n = self._cache
        if row_sums is not None:
            prob = prob * row_sums
        return (prob - onehot) * (dloss / n)


class MSE:
    """Mean squared error ``mean((y - t)**2)`` over all elements (PyTorch's MSELoss)."""

    def __call__(self, y: Array, t: Array) -> Array:
        return self.forward(y, t)

    def forward(self, y: Array, t: Array) -> Array:
        xp = _check_logits("MSE", y)
        if not array_api_compat.is_array_api_obj(t) or tuple(t.shape) != tuple(y.shape):
            raise ValueError(f"MSE: target has shape {tuple(getattr(t, 'shape', ()))}; "
                             f"expected the prediction's shape {tuple(y.shape)} (for class "
                             "labels use SoftmaxCrossEntropy)")
        if math.prod(y.shape) == 0:
            raise ValueError(f"MSE: empty batch (predictions of shape {tuple(y.shape)}); the "
                             "mean loss over no elements is undefined: expected at least one")
        check_same_device(y, t, "prediction", "target")
        diff = y - xp.astype(t, y.dtype)
        self._diff = diff
        return xp.sum(diff * diff) / math.prod(diff.shape)

    def backward(self, dloss: float = 1.0) -> Array:
        if getattr(self, "_diff", None) is None:
            raise RuntimeError("MSE.backward: call forward first")
        return self._diff * (2.0 * dloss / math.prod(self._diff.shape))
