"""Small 2-D toy data sets for classifiers: spiral, moons, circles.

Each returns host NumPy arrays ``X`` (float32, shape (N, 2)) and ``y`` (int64, shape (N,)),
reproducible from ``seed``; move them with :func:`xpnet.to_device` or a
:class:`~xpnet.data.BatchLoader`.
"""

from __future__ import annotations

import numpy as np

from ..validate import int_at_least, non_negative_float, real_in_range

__all__ = ["circles", "moons", "spiral"]


def _check_count(value: object, name: str, minimum: int, owner: str) -> int:
    """Return value as int, or raise ValueError unless it is an integer >= minimum."""
    return int_at_least(owner, name, value, minimum)


def _check_noise(noise: object, owner: str) -> float:
    """Return noise as float, or raise ValueError unless it is a finite number >= 0."""
    return non_negative_float(owner, "noise", noise)


def _finish(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cast to the documented dtypes (float32 points, int64 labels)."""
    return X.astype(np.float32), y.astype(np.int64, copy=False)


def spiral(n_per_class: int = 100, n_classes: int = 3, noise: float = 0.2,
           seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms, one per class (the CS231n neural-network case study).

    Class ``j`` has radii ``linspace(0, 1, N)`` and angles ``linspace(4j, 4(j+1), N)`` plus
    Gaussian noise of standard deviation ``noise``; points are ``(r sin t, r cos t)``, so every
    point lies at its exact radius in [0, 1]. Points come ordered by class, not shuffled.

    Parameters
    ----------
    n_per_class : int
        Points per class (N), at least 1.
    n_classes : int
        Number of classes and arms (K), at least 1.
    noise : float
        Standard deviation of the angular noise, >= 0.
    seed : int or None
        Seed of the NumPy generator drawing the noise.

    Returns
    -------
    X : ndarray, float32, shape (N*K, 2)
    y : ndarray, int64, shape (N*K,), values 0..K-1, N of each.

    References
    ----------
    CS231n, "Putting it together: Minimal Neural Network Case Study",
    https://cs231n.github.io/neural-networks-case-study/

    Examples
    --------
    >>> X, y = spiral(100, 3)
    >>> X.shape, y.shape
    ((300, 2), (300,))
    """
    n = _check_count(n_per_class, "n_per_class", 1, "spiral")
    k = _check_count(n_classes, "n_classes", 1, "spiral")
    noise = _check_noise(noise, "spiral")
    rng = np.random.default_rng(seed)
    X = np.zeros((n * k, 2))
    y = np.zeros(n * k, dtype=np.int64)
    r = np.linspace(0.0, 1.0, n)
    for j in range(k):
        t = np.linspace(j * 4, (j + 1) * 4, n) + rng.standard_normal(n) * noise
        X[n * j:n * (j + 1)] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[n * j:n * (j + 1)] = j
    return _finish(X, y)


def moons(n: int = 200, noise: float = 0.2,
          seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, as scikit-learn's ``make_moons`` (shuffled, then noised).

    Class 0 is the upper arc ``(cos a, sin a)``, class 1 the lower arc
    ``(1 - cos a, 0.5 - sin a)``, ``a`` in ``linspace(0, pi)``; class 0 gets ``n // 2`` points and
    class 1 the rest. Points are shuffled and Gaussian noise of std ``noise`` is added to both
    coordinates. Same construction as scikit-learn, but a different random stream.

    Parameters
    ----------
    n : int
        Total number of points, at least 2 (one per class).
    noise : float
        Standard deviation of the Gaussian noise, >= 0.
    seed : int or None
        Seed of the NumPy generator (shuffle and noise).

    Returns
    -------
    X : ndarray, float32, shape (n, 2)
    y : ndarray, int64, shape (n,), values 0 and 1.

    Examples
    --------
    >>> X, y = moons(200, noise=0.1)
    >>> int(y.sum())
    100
    """
    n = _check_count(n, "n", 2, "moons")
    noise = _check_noise(noise, "moons")
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0, np.pi, n_out)
    a_in = np.linspace(0, np.pi, n_in)
    X = np.stack([np.concatenate([np.cos(a_out), 1 - np.cos(a_in)]),
                  np.concatenate([np.sin(a_out), 1 - np.sin(a_in) - 0.5])], axis=1)
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    return _shuffle_and_noise(X, y, noise, np.random.default_rng(seed))


def circles(n: int = 200, noise: float = 0.1, factor: float = 0.5,
            seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small circle inside a large one, as scikit-learn's ``make_circles``.

    Class 0 is ``n // 2`` points evenly spaced on the unit circle, class 1 the rest on a circle
    of radius ``factor``; points are shuffled and Gaussian noise of std ``noise`` is added.
    Same construction as scikit-learn, but a different random stream.

    Parameters
    ----------
    n : int
        Total number of points, at least 2 (one per class).
    noise : float
        Standard deviation of the Gaussian noise, >= 0.
    factor : float
        Radius of the inner circle relative to the outer one, 0 < factor < 1.
    seed : int or None
        Seed of the NumPy generator (shuffle and noise).

    Returns
    -------
    X : ndarray, float32, shape (n, 2)
    y : ndarray, int64, shape (n,), values 0 (outer) and 1 (inner).

    Examples
    --------
    >>> X, y = circles(100, noise=0.0)
    >>> X.shape
    (100, 2)
    """
    n = _check_count(n, "n", 2, "circles")
    noise = _check_noise(noise, "circles")
    factor = real_in_range("circles", "factor", factor, "a number with 0 < factor < 1",
                           low=0.0, high=1.0, low_open=True, high_open=True)
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    a_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    X = np.stack([np.concatenate([np.cos(a_out), factor * np.cos(a_in)]),
                  np.concatenate([np.sin(a_out), factor * np.sin(a_in)])], axis=1)
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    return _shuffle_and_noise(X, y, noise, np.random.default_rng(seed))


def _shuffle_and_noise(X: np.ndarray, y: np.ndarray, noise: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle rows, then add Gaussian noise (scikit-learn's order of operations)."""
    perm = rng.permutation(len(y))
    X, y = X[perm], y[perm]
    if noise > 0:
        X += rng.normal(scale=noise, size=X.shape)
    return _finish(X, y)
