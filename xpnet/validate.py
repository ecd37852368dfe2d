"""Argument validators: the one place that decides what a valid number or choice is.

Every validator accepts Python and NumPy numbers alike (``np.int64(32)``, ``np.float32(1e-3)``),
refuses ``bool`` (``True`` is not a batch size), NaN and infinities, and raises with one format::

    "{owner}: {name} must be {expected}, got {value!r}"

An environment variable read as a setting is refused as ``"{VARIABLE}={value!r}: expected
{options}"`` (:func:`env_choice`).

A value of the wrong kind (a string, None, a float where an integer is needed) raises
:class:`ArgumentTypeError`, a ``TypeError`` that is also a ``ValueError`` (as NumPy's
``AxisError`` is both a ``ValueError`` and an ``IndexError``), so ``except ValueError`` catches
every bad argument; a number out of range raises ``ValueError``. Each returns the value as a plain
Python ``int`` or ``float``, so what is stored (and checkpointed as JSON) is never a NumPy scalar.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ArgumentTypeError", "choice", "env_choice", "file_path", "flag",
           "function", "instance", "int_at_least", "layer_input", "non_negative_float",
           "non_negative_int", "not_nan", "pair", "positive_float", "positive_int",
           "positive_int_shape", "probability", "real_in_range", "shape_of"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind: a string, None or a float where a number or integer is
    expected."""


def _fail(owner: str, name: str, expected: str, value: Any, kind: type = ValueError) -> None:
    raise kind(f"{owner}: {name} must be {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    # numbers.Real covers int, float and NumPy's integer and floating scalars; bool and
    # np.bool_ are refused (np.bool_ is not registered as a number)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_at_least(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int``, which must be an integer ``>= minimum``."""
    expected = ("a positive integer" if minimum == 1 else
                "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}")
    if not _is_int(value):
        _fail(owner, name, expected, value, ArgumentTypeError)
    if value < minimum:
        _fail(owner, name, expected, value)
    return int(value)


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 1."""
    return int_at_least(owner, name, value, 1)


def non_negative_int(owner: str, name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 0."""
    return int_at_least(owner, name, value, 0)


def real_in_range(owner: str, name: str, value: Any, expected: str, *,
                  low: float = -math.inf, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval [low, high] (ends opened on request);
    ``expected`` words the interval in the message ("a positive finite number")."""
    if not _is_real(value):
        _fail(owner, name, expected, value, ArgumentTypeError)
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (low_open and v == low) \
            or (high_open and v == high):
        _fail(owner, name, expected, value)
    return v


def positive_float(owner: str, name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0."""
    return real_in_range(owner, name, value, "a finite number > 0", low=0.0, low_open=True)


def non_negative_float(owner: str, name: str, value: Any) -> float:
    """``value`` as a finite ``float`` >= 0."""
    return real_in_range(owner, name, value, "a finite number >= 0", low=0.0)


def probability(owner: str, name: str, value: Any, *, closed: bool = False) -> float:
    """``value`` as a ``float`` in [0, 1) (in [0, 1] with ``closed=True``)."""
    expected = "a number in [0, 1]" if closed else "a number in [0, 1)"
    return real_in_range(owner, name, value, expected, low=0.0, high=1.0, high_open=not closed)


def choice(owner: str, name: str, value: Any, options: Iterable[Any]) -> Any:
    """``value`` itself, which must be one of ``options``."""
    options = list(options)
    if isinstance(value, bool) or value not in options:
        _fail(owner, name, "one of " + ", ".join(repr(o) for o in options), value)
    return value


def env_choice(variable: str, value: str, options: dict[str, str]) -> str:
    """``value`` of environment variable ``variable``, which must be a key of ``options``
    (value -> what it means, or '' to say nothing more)."""
    if value not in options:
        said = [f"{k!r} ({v})" if v else repr(k) for k, v in options.items()]
        expected = ", ".join(said[:-1]) + f" or {said[-1]}" if len(said) > 1 else said[0]
        raise ValueError(f"{variable}={value!r}: expected {expected}")
    return value


def flag(owner: str, name: str, value: Any) -> bool:
    """``value`` itself, which must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        _fail(owner, name, "True or False", value, ArgumentTypeError)
    return bool(value)


def positive_int_shape(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """``value`` (a positive integer or a non-empty tuple of them) as a tuple of ``int``."""
    shape = (value,) if _is_int(value) else value
    expected = "a positive integer or a tuple of them"
    if not isinstance(shape, (tuple, list)) or not shape or not all(_is_int(d) for d in shape):
        _fail(owner, name, expected, value, ArgumentTypeError)
    if not all(d > 0 for d in shape):
        _fail(owner, name, expected, value)
    return tuple(int(d) for d in shape)


def shape_of(x: Any) -> tuple[int, ...] | str:
    """x's shape as a tuple, or its type's name when it has none (for messages)."""
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def layer_input(layer: Any, x: Any, ndim: int | None, expect: str, like: Any = None) -> Any:
    """Check a layer's input where the user called in; return its array namespace.

    ``ndim`` None accepts any rank. Raises ValueError naming the layer, the shape given and
    ``expect``; TypeError for a non-array or non-floating input, or a dtype other than
    ``like``'s; DeviceMismatchError when x and ``like`` (the layer's parameters) cannot be
    combined.
    """
    import array_api_compat

    from .backend import check_same_device

    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(f"{layer!r}: input x must be an array, got {type(x).__name__}; "
                        "move host data with xpnet.to_device(x)")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{layer!r}: input x has shape {shape_of(x)}; expected {expect}")
    xp = array_api_compat.array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{layer!r}: input x has dtype {x.dtype}; expected a floating dtype "
                        "(float32 or float64)")
    if like is not None:
        check_same_device(x, like, "input x", f"{layer!r} parameters")
        if x.dtype != like.dtype:
            raise TypeError(f"{layer!r}: input x has dtype {x.dtype}; expected {like.dtype}, "
                            "the parameters' dtype (cast the input or build the layer with "
                            "that dtype)")
    return xp


def not_nan(owner: str, name: str, value: Any) -> float:
    """``value`` as a ``float`` that may be infinite but not NaN (a running best starts at
    ``inf``)."""
    if not _is_real(value):
        _fail(owner, name, "a number", value, ArgumentTypeError)
    if math.isnan(value):
        _fail(owner, name, "a number", value)
    return float(value)


def instance(owner: str, name: str, value: Any, cls: type | tuple[type, ...],
             expected: str) -> Any:
    """``value`` itself, which must be an instance of ``cls`` (``expected`` words it)."""
    if not isinstance(value, cls):
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")
    return value


def file_path(owner: str, name: str, value: Any) -> Path:
    """``value`` (a ``str`` or ``os.PathLike``) as a :class:`~pathlib.Path`."""
    instance(owner, name, value, (str, os.PathLike), "a file path (str or Path)")
    return Path(value)


def function(owner: str, name: str, value: Any, expected: str) -> Any:
    """``value`` itself, which must be callable (``expected`` words its signature)."""
    if not callable(value):
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")
    return value


def pair(owner: str, name: str, value: Any, expected: str) -> tuple[Any, Any]:
    """``value`` (a tuple or list of two items) as a tuple."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")
    return tuple(value)
