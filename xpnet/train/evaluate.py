"""Evaluation and prediction: batched forward passes in evaluation mode.

:func:`evaluate` and :func:`predict` share one batching loop; :func:`evaluate` reads its
results back to the host once per call, not per batch. Data as users have it (lists, NumPy
arrays of any real or integer dtype, device arrays of another dtype) are cast to the model's
dtype batch by batch, in the transfer each batch makes anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace

from ..backend import Backend, current, to_device, to_numpy
from ..grad_mode import no_grad
from ..losses import SoftmaxCrossEntropy
from ..module import Module
from .checks import check_finite, check_targets, input_dtype, label_dtype, num_examples
from .metrics import Metric, Totals, default_metrics

__all__ = ["evaluate", "predict"]

Array = Any


def _outputs(model: Module, x: Any, batch_size: int, backend: Backend | None
             ) -> Iterator[tuple[int, Array]]:
    """``(start, model output)`` per batch of ``x`` (host or device), in evaluation mode and
    under :func:`xpnet.no_grad`, cast to the model's dtype; the model's previous mode is
    restored afterwards."""
    b = backend or current()
    x = _indexable(x)
    dtype = input_dtype(model)
    was_training = model.training
    model.eval()
    try:
        n = num_examples(x)
        for i in range(0, n, batch_size):
            with no_grad():  # nothing kept for a backward: about two activations at a time
                out = model.forward(to_device(x[i:min(i + batch_size, n), ...], dtype=dtype,
                                              backend=b))
            yield i, out
    finally:
        model.train(was_training)


def _indexable(a: Any) -> Any:
    return a if array_api_compat.is_array_api_obj(a) else np.asarray(a)


def _eval_loss(loss: Any) -> Any:
    # labels were checked once before training; skip the per-batch range check (a host sync)
    return SoftmaxCrossEntropy(check_range=False) if isinstance(loss, SoftmaxCrossEntropy) \
        else loss


def evaluate(model: Module, loss: Any, x: Any, y: Any, *, metrics: list[Metric] | None = None,
             batch_size: int = 1000, backend: Backend | None = None,
             check: bool = True) -> dict[str, float]:
    """Mean loss over the examples of ``(x, y)`` and each metric, in evaluation mode.

    ``metrics`` defaults to :func:`default_metrics` of the loss (accuracy for cross-entropy).
    Returns ``{"loss": ..., "acc": ...}`` (one key per metric name); one host sync in all.
    ``check=False`` skips the label-range and finiteness passes over the data, for a caller
    that has checked it already (``Trainer.fit`` checks its test data once, not every epoch).
    """
    y = _indexable(y)
    if num_examples(x) != num_examples(y):
        raise ValueError(f"evaluate: {num_examples(x)} inputs but {num_examples(y)} targets; "
                         "expected equal counts")
    if num_examples(x) == 0:
        raise ValueError("evaluate: x is empty; expected at least one example")
    if check and isinstance(loss, SoftmaxCrossEntropy):  # one reduction: labels in range
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            num_classes = _num_outputs(model, x, backend)
        check_targets(y, "evaluate: y", num_classes)
    if check:
        check_finite(x, "evaluate: x")
    b = backend or current()
    loss_fn = _eval_loss(loss)
    totals = Totals(default_metrics(loss) if metrics is None else metrics, weighted=True)
    y_dtype = label_dtype(y, input_dtype(model))
    for i, out in _outputs(model, x, batch_size, b):
        yb = to_device(y[i:i + out.shape[0], ...], dtype=y_dtype, backend=b)
        totals.add(loss_fn.forward(out, yb), out, yb)
    return totals.read()[0]


def _num_outputs(model: Module, x: Any, backend: Backend | None) -> int | None:
    """The class count a model without ``num_classes`` produces (one forward of one example)."""
    for _, out in _outputs(model, _indexable(x)[:1, ...], 1, backend):
        return int(out.shape[1]) if out.ndim == 2 else None
    return None


def predict(model: Module, x: Any, *, classes: bool = True, batch_size: int = 1000,
            backend: Backend | None = None) -> np.ndarray:
    """The model's outputs for ``x`` as a host NumPy array, in evaluation mode: the class
    indices (argmax over axis 1) when ``classes``, else the raw outputs (regression)."""
    pick: Callable[[Array], Array] = (lambda o: array_namespace(o).argmax(o, axis=1)) \
        if classes else (lambda o: o)
    out = [to_numpy(pick(o)) for _, o in _outputs(model, x, batch_size, backend)]
    if out:
        return np.concatenate(out)
    return np.zeros(0, dtype=np.int64)
