"""Weight initialisers. Draws happen on the host (float64), so a seed gives the same weights on
every backend; :func:`init_array` casts and transfers them to the current device.

References: Glorot & Bengio (2010) for Xavier; He et al. (2015) for He/Kaiming.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Union

import numpy as np

from .backend import Backend, to_device
from .rng import Generator, check_generator

__all__ = ["he_normal", "he_uniform", "init_array", "normal", "xavier_normal",
           "xavier_uniform", "zeros"]

InitSpec = Union[str, float, Callable[..., np.ndarray]]


def normal(rng: Generator, shape: tuple[int, ...], std: float = 0.01, **_: Any) -> np.ndarray:
    """N(0, std^2): the textbook's ``weight_init_std * randn``."""
    if std <= 0:
        raise ValueError(f"std: expected a positive standard deviation, got {std}")
    return rng.normal(shape, std)


def xavier_normal(rng: Generator, shape: tuple[int, ...], fan_in: int, fan_out: int,
                  **_: Any) -> np.ndarray:
    """Glorot normal: std = sqrt(2 / (fan_in + fan_out))."""
    return rng.normal(shape, math.sqrt(2.0 / (fan_in + fan_out)))


def xavier_uniform(rng: Generator, shape: tuple[int, ...], fan_in: int, fan_out: int,
                   **_: Any) -> np.ndarray:
    """Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform_host(shape, -a, a)


def he_normal(rng: Generator, shape: tuple[int, ...], fan_in: int, **_: Any) -> np.ndarray:
    """He (Kaiming) normal for ReLU: std = sqrt(2 / fan_in)."""
    return rng.normal(shape, math.sqrt(2.0 / fan_in))


def he_uniform(rng: Generator, shape: tuple[int, ...], fan_in: int, **_: Any) -> np.ndarray:
    """He (Kaiming) uniform: U(-a, a) with a = sqrt(6 / fan_in)."""
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform_host(shape, -a, a)


def zeros(rng: Generator, shape: tuple[int, ...], **_: Any) -> np.ndarray:
    """All zeros (biases)."""
    return np.zeros(shape)


_NAMED: dict[str, Callable[..., np.ndarray]] = {
    "he": he_normal, "he_normal": he_normal, "he_uniform": he_uniform,
    "xavier": xavier_normal, "xavier_normal": xavier_normal, "glorot": xavier_normal,
    "xavier_uniform": xavier_uniform, "zeros": zeros}


def init_array(spec: InitSpec, rng: Generator, shape: tuple[int, ...], fan_in: int,
               fan_out: int, dtype: str = "float32", backend: Backend | None = None) -> Any:
    """Draw an array by ``spec`` on the host and move it to the device in ``dtype``.

    ``spec`` is a name ('he', 'he_uniform', 'xavier', 'xavier_uniform', 'zeros'), a float (the
    std of a normal, as in the textbook's ``weight_init_std``) or a callable
    ``f(rng, shape, fan_in=..., fan_out=...) -> np.ndarray``.
    """
    check_generator("init", rng)
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _NAMED:
            raise ValueError(f"init: unknown initialiser {spec!r}; expected a float std or one of "
                             f"{sorted(_NAMED)}")
        host = _NAMED[key](rng, shape, fan_in=fan_in, fan_out=fan_out)
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        host = normal(rng, shape, float(spec))
    elif callable(spec):
        host = np.asarray(spec(rng, shape, fan_in=fan_in, fan_out=fan_out))
        if host.shape != tuple(shape):
            raise ValueError(f"init: callable returned shape {host.shape}, expected {shape}")
    else:
        raise TypeError(f"init: expected a name, a float std or a callable, got {spec!r}")
    return to_device(host, dtype=dtype, backend=backend)
