"""The default Generator: where layers built without ``rng=`` draw their initial weights.

One process-wide :class:`~xpnet.rng.Generator` that advances with every draw, so two
same-shaped layers built without ``rng=`` get different weights (PyTorch's global generator,
Chainer's default initialisers). :func:`manual_seed` resets it for a reproducible script.
An explicit ``rng=`` (as the library's models pass) never touches it.
"""

from __future__ import annotations

from .rng import Generator

__all__ = ["default_generator", "manual_seed", "spawn_generator"]

_default = Generator(0)


def default_generator() -> Generator:
    """The process-wide Generator used when a layer is built without ``rng=``."""
    return _default


def manual_seed(seed: int) -> Generator:
    """Reseed the default Generator (``xpnet.manual_seed(0)`` at the top of a script makes its
    ``rng``-less layers reproducible); returns it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative integer, got {seed!r}")
    global _default
    _default = Generator(seed)
    return _default


def spawn_generator() -> Generator:
    """A new Generator seeded from the default one, for a layer that keeps its own stream
    (Dropout's masks): two such layers draw different masks, and ``manual_seed`` makes them
    reproducible."""
    return Generator(int(_default.uniform_host((), 0.0, 2.0 ** 31)))
