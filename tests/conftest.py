"""Shared fixtures: every backend-dependent test runs once per backend from one file.

``backend`` is parametrised over numpy, array_api_strict, torch and cupy (cupy marked ``gpu``);
each non-NumPy backend is skipped cleanly when its library (or, for cupy, a CUDA device) is
missing. Test ids name the backend: ``test_x[numpy]``, ``test_x[torch]``.

``XPNET_TEST_DEVICE=device1`` (or ``device2``) puts every array_api_strict case on that
non-default device, which, like a GPU, refuses conversion to NumPy and any mix with arrays on
another device; the run then keeps only the array_api_strict cases (the others are deselected).
CI runs the suite a second time that way, so an implicit host transfer fails on a CPU machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import pytest

import xpnet
from xpnet import backend as backend_module
from xpnet import ops

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "cupy")
BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("array_api_strict", id="array_api_strict"),
    pytest.param("torch", id="torch"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
]
OTHER_BACKEND_PARAMS = BACKEND_PARAMS[1:]  # everything compared against the NumPy run

# array_api_strict's device for this run: None (its default CPU_DEVICE) or e.g. 'device1'
STRICT_DEVICE = os.environ.get("XPNET_TEST_DEVICE") or None


def pytest_report_header(config):
    if STRICT_DEVICE:
        return (f"XPNET_TEST_DEVICE={STRICT_DEVICE}: array_api_strict cases on that device, "
                "all other cases deselected")
    return None


def pytest_collection_modifyitems(config, items):
    """With XPNET_TEST_DEVICE, keep only the cases that run on array_api_strict."""
    if not STRICT_DEVICE:
        return
    keep, drop = [], []
    for item in items:
        (keep if "array_api_strict" in item.nodeid else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

# float64 gradient checks by central differences (eps = 1e-6)
RTOL, ATOL = 1e-5, 1e-7


def to_np(x) -> np.ndarray:
    """Any backend's array (or scalar) as a host NumPy array."""
    return xpnet.to_numpy(x)


@contextlib.contextmanager
def fast_paths(enabled: bool = True) -> Iterator[None]:
    """With ``enabled=False``, every dispatch of :mod:`xpnet.ops` and :mod:`xpnet.rng` takes its
    standard-only fallback inside the block (``fast_path_kind`` answers 'generic')."""
    if enabled:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "fast_path_kind", lambda xp: "generic")
        yield


def fallback(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with every fast path off: the standard-only fallback's result."""
    with fast_paths(False):
        return fn(*args, **kwargs)


def cuda_usable() -> bool:
    """True when CuPy is importable and sees a CUDA device."""
    return backend_module.cuda_status()[0]


def require_backend(name: str) -> None:
    """Skip the calling test unless backend ``name`` can run here."""
    if name != "numpy":
        pytest.importorskip(name)
    if name == "cupy":
        ok, why = backend_module.cuda_status()
        if not ok:
            pytest.skip(f"cupy backend unavailable: {why}")


@contextlib.contextmanager
def use_backend(name: str, device=None) -> Iterator[xpnet.Backend]:
    """Select a backend for the duration of a ``with`` block, then restore the previous one.

    array_api_strict goes on ``XPNET_TEST_DEVICE`` when that is set and no device is given.
    """
    previous = backend_module.selection._current
    if name == "array_api_strict" and device is None:
        device = STRICT_DEVICE
    try:
        yield xpnet.set_backend(name, device)
    finally:
        backend_module.selection._current = previous


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


def class_data(n, d=5, classes=3, seed=0, dtype=np.float32):
    """A toy classification set: ``n`` normal rows of ``d`` features, labels cycling
    through ``classes`` (every class present once n >= classes)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), np.arange(n) % classes


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
