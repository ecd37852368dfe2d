"""Random numbers: seeded generators, the default generator, and device random draws.

A :class:`Generator`'s whole state is a host NumPy generator, so one seed gives the same
weights on every backend and saving one state resumes every stream. Device draws (dropout
masks) take a sub-seed from it and run :func:`device_uniform`: a device kernel where the
backend has one (:mod:`xpnet.backend.random`), else a host draw and one transfer.

The default generator is where layers built without ``rng=`` draw their initial weights: one
process-wide Generator that advances with every draw, so two same-shaped layers built without
``rng=`` get different weights (PyTorch's global generator, Chainer's default initialisers).
:func:`manual_seed` resets it for a reproducible script; an explicit ``rng=`` never touches it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np

from . import ops, validate
from .backend import current
from .backend.random import UNIFORM

__all__ = ["Generator", "check_generator", "default_generator", "device_uniform", "manual_seed",
           "spawn_generator"]


def _uniform_host(xp: Any, seed: int, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    draw = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return xp.asarray(draw, dtype=dtype, device=device)


def device_uniform(seed: int, shape: tuple[int, ...], dtype: Any, *, xp: Any,
                   device: Any) -> Any:
    """Uniform [0, 1) numbers of ``shape`` drawn on ``device`` from an integer seed.

    Reproducible: the same seed gives the same numbers on the same backend. Where the backend
    has a device kernel the numbers are drawn there (no host transfer); the fallback draws on
    the host with NumPy and transfers once.
    """
    kernel: Callable[..., Any] = UNIFORM.get(ops.fast_path_kind(xp), _uniform_host)
    return kernel(xp, seed, tuple(shape), dtype, device)


class Generator:
    """A seeded generator: host draws for initial weights, device draws for dropout masks.

    Weights are drawn on the host with NumPy and transferred, so one seed gives the same initial
    weights on every backend. Device draws take a fresh 63-bit sub-seed from the host stream
    and hand it to :func:`device_uniform`, so the whole state is the host state: saving and
    restoring it (:meth:`get_state`, :meth:`set_state`) resumes both streams exactly. On CuPy
    the sub-seed keys a Philox4x32-10 cuRAND generator (one per device, created once). Any float
    dtype works (float16 is drawn as float32 and cast; cuRAND has no float16).
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
        return device_uniform(sub_seed, shape, dtype if dtype is not None else xp.float32,
                              xp=xp, device=device)

    def get_state(self) -> dict[str, Any]:
        """The JSON-serialisable state (NumPy bit generator state)."""
        # NumPy builds a new dict on each read; its stubs declare only a Mapping
        return cast(dict[str, Any], self.host.bit_generator.state)

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`get_state`."""
        self.host.bit_generator.state = state

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed})"


_default = Generator(0)


def check_generator(owner: str, rng: Any) -> Generator | None:
    """``rng`` itself when it is None or an :class:`xpnet.Generator`; anything else (a NumPy
    ``Generator`` or ``RandomState``, a seed) is refused by name: a NumPy generator's
    ``normal(shape, std)`` reads the shape as the mean and would draw a wrongly shaped
    array without an error."""
    if rng is not None and not isinstance(rng, Generator):
        raise TypeError(f"{owner}: rng must be an xpnet.Generator (xpnet.Generator(seed)), "
                        f"got {type(rng).__module__}.{type(rng).__qualname__}")
    return rng


def default_generator() -> Generator:
    """The process-wide Generator used when a layer is built without ``rng=``."""
    return _default


def manual_seed(seed: int) -> Generator:
    """Reseed the default Generator (``xpnet.manual_seed(0)`` at the top of a script makes its
    ``rng``-less layers reproducible); returns it."""
    global _default
    _default = Generator(validate.non_negative_int("manual_seed", "seed", seed))
    return _default


def spawn_generator() -> Generator:
    """A new Generator seeded from the default one, for a layer that keeps its own stream
    (Dropout's masks): two such layers draw different masks, and ``manual_seed`` makes them
    reproducible."""
    return Generator(int(_default.uniform_host((), 0.0, 2.0 ** 31)))
