"""Explicit, seeded random number generation that behaves the same on every backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import ops
from .backend import current

__all__ = ["Generator"]


class Generator:
    """A seeded generator: host draws for initial weights, device draws for dropout masks.

    Weights are drawn on the host with NumPy and transferred, so one seed gives the same initial
    weights on every backend. Device draws (dropout masks) take a fresh 63-bit sub-seed from the
    host stream and hand it to :func:`xpnet.ops.uniform`, so the whole state is the host state:
    saving and restoring it (:meth:`get_state`, :meth:`set_state`) resumes both streams exactly.
    On CuPy the sub-seed keys a Philox4x32-10 cuRAND generator (one per device, created once):
    counter-based, so a new key is a host-side assignment, not the state set-up kernel CuPy's
    default XORWOW runs after every seed. Any float dtype works (float16 is drawn as float32 and
    cast; cuRAND has no float16). ``benchmarks/gpu_check.py`` measures the per-call cost.
    """

    def __init__(self, seed: int | None = 0):
        self.seed = seed  # the seed it was built with, shown by repr (draws move the state)
        self.host = np.random.default_rng(seed)
        # data parallelism: rank r's device draws are mixed with r, so the ranks' dropout
        # masks differ while the host state (what checkpoints save) stays the same everywhere
        self.stream = 0

    def normal(self, shape: tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """Host float64 normal draws (callers cast and transfer)."""
        return self.host.standard_normal(shape) * std

    def uniform_host(self, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        """Host float64 uniform draws in [low, high)."""
        return self.host.uniform(low, high, size=shape)

    def permutation(self, n: int) -> np.ndarray:
        """A host permutation of range(n), for shuffling."""
        return self.host.permutation(n)

    def uniform(self, shape: tuple[int, ...], dtype: Any = None, *, xp: Any = None,
                device: Any = None) -> Any:
        """Uniform [0, 1) array of ``shape`` on a device (the current backend's by default),
        drawn there when the backend can."""
        if xp is None:
            b = current()
            xp, device = b.xp, b.device if device is None else device
        sub_seed = int(self.host.integers(0, 2**63 - 1))
        if self.stream:
            sub_seed = int(np.random.SeedSequence([sub_seed, self.stream])
                           .generate_state(1, np.uint64)[0] >> 1)
        return ops.uniform(sub_seed, shape, dtype if dtype is not None else xp.float32,
                           xp=xp, device=device)

    def get_state(self) -> dict:
        """The JSON-serialisable state (NumPy bit generator state)."""
        return self.host.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`get_state`."""
        self.host.bit_generator.state = state

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed})"
