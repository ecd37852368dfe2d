"""Data: toy 2-D sets, verified MNIST / Fashion-MNIST loading, and a device batch loader.

Everything here returns or consumes host NumPy arrays; :class:`BatchLoader` moves batches to the
selected backend's device.
"""

from .loader import BatchLoader
from .mnist import DataError, DownloadError, Source, load_fashion_mnist, load_mnist
from .synthetic import circles, moons, spiral

__all__ = [
    "BatchLoader", "DataError", "DownloadError", "Source", "circles", "load_fashion_mnist",
    "load_mnist", "moons", "spiral",
]
