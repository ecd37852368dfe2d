"""Shared fixtures: every backend-dependent test runs once per backend from one file.

``backend`` is parametrised over numpy, array_api_strict, torch and cupy (cupy marked ``gpu``);
each non-NumPy backend is skipped cleanly when its library (or, for cupy, a CUDA device) is
missing. Test ids name the backend: ``test_x[numpy]``, ``test_x[torch]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

import xpnet
from xpnet import backend as backend_module

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "cupy")
BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("array_api_strict", id="array_api_strict"),
    pytest.param("torch", id="torch"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
]
OTHER_BACKEND_PARAMS = BACKEND_PARAMS[1:]  # everything compared against the NumPy run

# float64 gradient checks by central differences (eps = 1e-6)
RTOL, ATOL = 1e-5, 1e-7


def to_np(x) -> np.ndarray:
    """Any backend's array (or scalar) as a host NumPy array."""
    return xpnet.to_numpy(x)


def cuda_usable() -> bool:
    """True when CuPy is importable and sees a CUDA device."""
    return backend_module._cuda_status()[0]


def require_backend(name: str) -> None:
    """Skip the calling test unless backend ``name`` can run here."""
    if name != "numpy":
        pytest.importorskip(name)
    if name == "cupy":
        ok, why = backend_module._cuda_status()
        if not ok:
            pytest.skip(f"cupy backend unavailable: {why}")


@contextlib.contextmanager
def use_backend(name: str, device=None) -> Iterator[xpnet.Backend]:
    """Select a backend for the duration of a ``with`` block, then restore the previous one."""
    previous = backend_module._current
    try:
        yield xpnet.set_backend(name, device)
    finally:
        backend_module._current = previous


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request, monkeypatch) -> Iterator[xpnet.Backend]:
    """The selected backend (numpy, array_api_strict, torch, cupy); restored afterwards."""
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend(request.param)
    with use_backend(request.param) as b:
        yield b


@pytest.fixture
def xp(backend):
    """The Array API namespace of the selected backend."""
    return backend.xp


def dev(a, dtype=None):
    """A copy of host data on the current backend (keeps a NumPy array's dtype unless told).

    The copy matters: on CPU backends to_device may share memory with its argument, and
    in-place updates (optimizers, add_windows) would otherwise change the test's reference data.
    """
    return xpnet.to_device(np.array(a, copy=True), dtype=dtype)


def assert_gradients_close(results: dict, expected_keys=None, rtol: float = RTOL,
                           atol: float = ATOL) -> None:
    """Assert every analytic gradient from xpnet.gradcheck matches its numerical estimate.

    Each numerical gradient must also be non-zero somewhere, so the check is never vacuous.
    """
    if expected_keys is not None:
        assert set(results) == set(expected_keys)
    for name, (analytic, numeric) in results.items():
        assert analytic.shape == numeric.shape, name
        assert np.all(np.isfinite(analytic)), name
        assert np.abs(numeric).max() > 1e-6, f"numerical gradient of {name!r} is all zero"
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of {name!r}")
