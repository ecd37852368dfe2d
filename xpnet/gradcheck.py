"""Numerical gradient checking by central differences, for tests and for users' own layers.

Arrays are perturbed on the host in float64 and moved to the current backend for each
evaluation, so the same check runs on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import Backend, to_device, to_numpy
from .module import Module, Parameter

__all__ = ["GradCheck", "GradientCheckError", "check_loss", "check_module",
           "numerical_gradient"]


class GradientCheckError(AssertionError):
    """An analytic gradient disagrees with its central-difference estimate."""


class GradCheck(dict[str, tuple[np.ndarray, np.ndarray]]):
    """The result of :func:`check_module`: ``{name: (analytic, numeric)}`` plus a verdict.

    ``ok`` is True when every analytic gradient is finite and within ``atol + rtol*|numeric|``
    of its estimate; ``max_errors`` maps each name to its largest absolute difference;
    :meth:`raise_if_failed` raises :class:`GradientCheckError` naming the worst entries.
    """

    def __init__(self, pairs: dict[str, tuple[np.ndarray, np.ndarray]], rtol: float,
                 atol: float):
        super().__init__(pairs)
        self.rtol, self.atol = rtol, atol

    def _bad(self, name: str) -> bool:
        a, n = self[name]
        return a.shape != n.shape or not np.all(np.isfinite(a)) \
            or not np.allclose(a, n, rtol=self.rtol, atol=self.atol)

    @property
    def max_errors(self) -> dict[str, float]:
        return {k: float(np.max(np.abs(a - n), initial=0.0)) if a.shape == n.shape
                else float("inf") for k, (a, n) in self.items()}

    @property
    def failed(self) -> list[str]:
        """Names whose gradients disagree."""
        return [k for k in self if self._bad(k)]

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_if_failed(self) -> GradCheck:
        """Raise :class:`GradientCheckError` unless :attr:`ok`; returns self."""
        bad = self.failed
        if bad:
            errs = self.max_errors
            detail = ", ".join(f"{k} (max abs error {errs[k]:.3g})" for k in bad)
            raise GradientCheckError(f"analytic gradients disagree with central differences "
                                     f"for {detail}; rtol={self.rtol}, atol={self.atol}. "
                                     "Check backward() against forward(), and use float64")
        return self

    def __repr__(self) -> str:
        errs = ", ".join(f"{k}: {v:.2g}" for k, v in self.max_errors.items())
        return f"GradCheck(ok={self.ok}, max errors {{{errs}}})"


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray,
                       eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of scalar ``f`` at host array ``x`` (x is restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(*x.shape):
        orig = x[idx]
        x[idx] = orig + eps
        fp = f(x)
        x[idx] = orig - eps
        fm = f(x)
        x[idx] = orig
        grad[idx] = (fp - fm) / (2.0 * eps)
    return grad


def check_module(module: Module, x: Any, *, seed: int = 0, eps: float = 1e-6,
                 before_forward: Callable[[], None] | None = None,
                 backend: Backend | None = None, rtol: float = 1e-5,
                 atol: float = 1e-7) -> GradCheck:
    """Analytic vs numerical gradients of ``sum(module(x) * r)`` for a fixed random ``r``.

    Returns a :class:`GradCheck`: ``{"x": (analytic, numeric), "<param name>": (analytic,
    numeric), ...}`` with a verdict (``.ok``, ``.max_errors``, ``.raise_if_failed()``) at
    ``rtol``/``atol``.
    ``before_forward`` runs before every forward pass (re-seed a Dropout there to fix its mask).
    Use float64 parameters and inputs.
    """
    prep = before_forward or (lambda: None)
    params = module.parameters()
    prep()
    y = module.forward(x)
    r_host = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    r = to_device(r_host, dtype=y.dtype, backend=backend)
    dx = module.backward(r)
    results = {"x": [to_numpy(dx)]}
    results.update({n: [to_numpy(p.grad)] for n, p in params.items()})
    saved_buffers = {k: to_numpy(v).copy() for k, v in module.buffers().items()}

    def objective(x_dev: Any) -> float:
        for k, v in saved_buffers.items():  # running statistics must not drift between calls
            owner, leaf = module._owner(k)
            setattr(owner, leaf, to_device(v, dtype=x.dtype, backend=backend))
        prep()
        return float(np.sum(to_numpy(module.forward(x_dev)) * r_host))

    x_host = to_numpy(x).astype(np.float64)
    results["x"].append(numerical_gradient(
        lambda h: objective(to_device(h, dtype=x.dtype, backend=backend)), x_host, eps))
    for n, p in params.items():
        original = p.data
        host = to_numpy(original).astype(np.float64)

        def with_param(h: np.ndarray, p: Parameter = p, dtype: Any = original.dtype) -> float:
            p.data = to_device(h, dtype=dtype, backend=backend)
            return objective(x)

        results[n].append(numerical_gradient(with_param, host, eps))
        p.data = original
    return GradCheck({k: (v[0], v[1]) for k, v in results.items()}, rtol, atol)


def check_loss(loss: Any, y: Any, t: Any, *, eps: float = 1e-6,
               backend: Backend | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(analytic, numerical) gradient of a loss with respect to its predictions ``y``."""
    loss.forward(y, t)
    analytic = to_numpy(loss.backward())
    host = to_numpy(y).astype(np.float64)
    numeric = numerical_gradient(
        lambda h: float(to_numpy(loss.forward(to_device(h, dtype=y.dtype, backend=backend), t))),
        host, eps)
    return analytic, numeric
