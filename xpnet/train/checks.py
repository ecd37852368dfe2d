"""Checks of the data before training starts: counts, finite inputs, labels in range."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace

from .. import validate
from ..backend import to_numpy
from ..losses import SoftmaxCrossEntropy
from ..module import Module

__all__ = ["check_arrays", "check_data", "check_finite", "check_targets", "input_dtype",
           "label_dtype", "num_examples"]


def num_examples(a: Any) -> int:
    """Length of the leading axis of a host or device array (or a list)."""
    shape = getattr(a, "shape", None)
    return int(shape[0]) if shape else len(a)


def input_dtype(model: Module) -> str | None:
    """The dtype name data are cast to at the data boundary (fit, evaluate, predict): the
    model's floating parameters' dtype ('float32'), None for a model without parameters."""
    for p in model.parameters().values():
        return str(getattr(p.data.dtype, "name", p.data.dtype)).rsplit(".", 1)[-1]
    return None


def label_dtype(y: Any, dtype: str | None) -> str | None:
    """What targets ``y`` are cast to: integer labels of any width become int64 (the index
    type every backend's losses take); real-valued targets the model's ``dtype``."""
    kind = y.dtype.kind if isinstance(y, np.ndarray) else (
        "i" if array_namespace(y).isdtype(y.dtype, "integral") else "f")
    return "int64" if kind in "iu" else dtype


def check_arrays(owner: str, **arrays: Any) -> None:
    """ArgumentTypeError naming the argument unless each value is an array (host or device)
    with a leading axis of examples, or a list of examples (``fit(x, 5)`` names ``y_train``)."""
    for name, a in arrays.items():
        shape = getattr(a, "shape", None)
        if (shape is None and not isinstance(a, (list, tuple))) \
                or (shape is not None and len(shape) == 0):
            raise validate.ArgumentTypeError(
                f"{owner}: {name} must be an array with one row per example, got {a!r}")


def check_data(model: Module, loss: Any, x: Any, y: Any, what: str, *,
               names: tuple[str, str] | None = None) -> None:
    """Refuse data that cannot be trained on, naming ``what`` ('training data', 'test data')
    and the array (``names``, e.g. ``("x_train", "y_train")``).

    ``x`` and ``y`` may be host NumPy arrays or device arrays. Required: equal counts, at least
    one example, finite inputs (one vectorised pass; a device array costs one reduction and
    one host read) and, for cross-entropy with a model that declares ``num_classes``, integer
    labels in ``[0, num_classes)``. The first bad row is named.
    """
    names = names or (f"{what} inputs", f"{what} labels")
    nx, ny = num_examples(x), num_examples(y)
    if nx != ny:
        raise ValueError(f"{what}: {nx} inputs but {ny} labels; expected equal counts")
    if nx == 0:
        raise ValueError(f"{what}: {names[0]} is empty; expected at least one example")
    check_finite(x, names[0])
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(loss, SoftmaxCrossEntropy):
        return
    check_targets(y, names[1], num_classes)


def check_finite(x: Any, name: str) -> None:
    """ValueError naming ``name``, the problem (NaN or inf) and the first bad row, unless every
    value of ``x`` (host or device, floating) is finite. One reduction when all is well."""
    if array_api_compat.is_array_api_obj(x) and not isinstance(x, np.ndarray):
        xp = array_namespace(x)
        if not xp.isdtype(x.dtype, "real floating") or bool(xp.all(xp.isfinite(x))):
            return
        x = to_numpy(x)  # only on the failure path
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return
    finite = np.isfinite(x)
    if finite.all():
        return
    rows = ~finite.reshape(len(x), -1).all(axis=1)
    first = int(np.argmax(rows))
    bad = x[first][~finite[first]]
    kind = "NaN" if np.isnan(bad).any() else "an infinite value"
    raise ValueError(f"{name}: row {first} holds {kind} ({int(rows.sum())} of {len(x)} rows "
                     "hold NaN or inf); expected finite values: clean or drop those rows")


def check_targets(y: Any, name: str, num_classes: int | None) -> None:
    """ValueError naming ``name``, the value and its first row, unless integer labels ``y``
    (host or device) lie in ``[0, num_classes)``; float (soft) targets must be finite."""
    if array_api_compat.is_array_api_obj(y) and not isinstance(y, np.ndarray):
        xp = array_namespace(y)
        if xp.isdtype(y.dtype, "real floating"):
            check_finite(y, name)
            return
        if num_classes is None or y.ndim != 1:
            return
        lo, hi = xp.min(y), xp.max(y)
        if 0 <= int(lo) and int(hi) < num_classes:
            return
        y = to_numpy(y)
    y = np.asarray(y)
    if y.dtype.kind == "f":
        check_finite(y, name)
        return
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name}: class labels must be integers, got dtype {y.dtype}")
    if num_classes is None or y.ndim != 1 or len(y) == 0:
        return
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"{name}: row {first} holds label {int(y[first])} "
                         f"({int(bad.sum())} of {len(y)} labels out of range); expected labels "
                         f"in [0, {num_classes - 1}] for {num_classes} classes")
