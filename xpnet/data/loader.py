"""Mini-batches on the backend's device, reshuffled every epoch from a seeded generator."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from ..backend import Backend, as_host, current, device_scope, free_device_memory, to_device
from ..rng import Generator

__all__ = ["BatchLoader"]


class BatchLoader:
    """Iterate over ``(xb, yb)`` mini-batches already on the backend's device.

    Each ``iter()`` is one epoch: with ``shuffle`` the examples are visited in a fresh
    permutation drawn from ``rng`` (without replacement, reproducible from its seed), otherwise
    in order. Batches are gathered either on the host and transferred one by one, or, when the
    data set is *resident*, moved to the device once and gathered there with ``xp.take``.

    Parameters
    ----------
    x : array_like, (N, ...)
        Inputs: a NumPy array or list, or an array of any backend on any device (copied to the
        host once, :func:`xpnet.backend.as_host`).
    y : array_like of int, (N, ...)
        Integer labels of any width (host or device, as ``x``, or a list), delivered as int64.
    batch_size : int
        Examples per batch (default 100).
    shuffle : bool
        Draw a new order every epoch (default True).
    rng : xpnet.Generator, optional
        Source of the permutations (default ``Generator(0)``).
    drop_last : bool
        Skip the last batch when it is smaller than ``batch_size`` (default False).
    backend : xpnet.Backend, optional
        Where batches go (default :func:`xpnet.backend.current`).
    resident : True, False or 'auto'
        Keep the whole data set on the device. 'auto' (default) does so on a GPU backend
        when the data take at most half of the free device memory.
    dtype : str, optional
        The floating dtype of the batches of ``x`` ('float32', 'float64'): a NumPy array of
        any real or integer dtype is cast once, on the host (the Trainer passes its model's
        dtype). None (default): NumPy arrays keep their dtype; lists of numbers become
        float32, xpnet's default.
    shard : (rank, size), optional
        Data parallelism: every rank draws the same permutation (same ``rng`` seed) and yields
        only its contiguous share of each global batch of ``batch_size`` (shares differ by at
        most one example). A batch with fewer examples than ranks is refused.

    Notes
    -----
    Batches may share memory with ``x`` and ``y`` (NumPy backend, or no shuffling): treat them
    as read-only.

    Examples
    --------
    >>> import numpy as np, xpnet
    >>> x, y = np.zeros((250, 2), np.float32), np.zeros(250, np.int64)
    >>> loader = BatchLoader(x, y, 100, rng=xpnet.Generator(0))
    >>> len(loader), [len(yb) for _, yb in loader]
    (3, [100, 100, 50])
    """

    x: np.ndarray
    y: np.ndarray  # int64 labels
    batch_size: int
    shuffle: bool
    drop_last: bool
    shard: tuple[int, int] | None
    rng: Generator
    backend: Backend
    resident: bool
    _xd: Any  # the resident copies on the device (only when resident)
    _yd: Any

    def __init__(self, x: Any, y: Any, batch_size: int = 100, *, shuffle: bool = True,
                 rng: Generator | None = None, drop_last: bool = False,
                 backend: Backend | None = None, resident: bool | str = "auto",
                 dtype: str | None = None, shard: tuple[int, int] | None = None):
        listed = not array_api_compat.is_array_api_obj(x)
        x, y = as_host(x, "x"), as_host(y, "y")
        if dtype is None and listed:
            dtype = "float32"
        if dtype is not None:
            if dtype not in ("float16", "float32", "float64"):
                raise ValueError(f"dtype: expected 'float16', 'float32' or 'float64', got "
                                 f"{dtype!r}")
            if x.dtype.kind not in "biuf":
                raise TypeError(f"x: expected real or integer inputs to cast to {dtype}, got "
                                f"dtype {x.dtype}")
            x = x.astype(dtype, copy=False)  # once, on the host
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"x and y: expected arrays with a leading example axis, got shapes "
                             f"{x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"x and y: expected the same number of examples, got {len(x)} "
                             f"inputs and {len(y)} labels")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"y: expected integer class labels, got dtype {y.dtype}")
        if not (resident is True or resident is False or resident == "auto"):
            raise ValueError(f"resident: expected True, False or 'auto', got {resident!r}")
        self.x, self.y = x, y.astype(np.int64, copy=False)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.shard = _check_shard(shard, len(self.y), self.batch_size, self.drop_last)
        self.rng = rng or Generator(0)
        self.backend = backend or current()
        if resident == "auto":
            resident = fits_on_device(self.x.nbytes + self.y.nbytes, self.backend)
        self.resident = bool(resident)
        if self.resident:  # one transfer now; every batch is then gathered on the device
            self._xd = to_device(self.x, backend=self.backend)
            self._yd = to_device(self.y, backend=self.backend)

    def __len__(self) -> int:
        n, bs = len(self.y), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        # The permutation is drawn here, not lazily, so each iter() call is one epoch's order.
        order = self.rng.permutation(len(self.y)) if self.shuffle else None
        return self._device_batches(order) if self.resident else self._host_batches(order)

    def _starts(self) -> range:
        n, bs = len(self.y), self.batch_size
        return range(0, n - n % bs if self.drop_last else n, bs)

    def _bounds(self) -> Iterator[tuple[int, int]]:
        """[start, stop) of each batch, or of this rank's share of it."""
        n, bs = len(self.y), self.batch_size
        for s in self._starts():
            e = min(s + bs, n)
            if self.shard is not None:
                rank, size = self.shard
                base, extra = divmod(e - s, size)
                s += rank * base + min(rank, extra)
                e = s + base + (rank < extra)
            yield s, e

    def _host_batches(self, order: np.ndarray | None) -> Iterator[tuple[Any, Any]]:
        """Gather on the host (a view when unshuffled), then transfer the batch."""
        b = self.backend
        for s, e in self._bounds():
            if order is None:
                xb, yb = self.x[s:e], self.y[s:e]  # views
            else:
                i = order[s:e]
                xb, yb = self.x[i], self.y[i]
            yield to_device(xb, backend=b), to_device(yb, backend=b)

    def _device_batches(self, order: np.ndarray | None) -> Iterator[tuple[Any, Any]]:
        """Slice or gather (``xp.take``) the resident arrays on the device."""
        xp = self.backend.xp
        idx = None if order is None else to_device(order, backend=self.backend)
        for s, e in self._bounds():
            if idx is None:
                yield self._xd[s:e, ...], self._yd[s:e, ...]
            else:
                i = idx[s:e]
                with device_scope(self.backend.device):  # CuPy: gather on the data's GPU
                    xb, yb = xp.take(self._xd, i, axis=0), xp.take(self._yd, i, axis=0)
                yield xb, yb


def _check_shard(shard: Any, n: int, bs: int, drop_last: bool) -> tuple[int, int] | None:
    if shard is None:
        return None
    ok = (isinstance(shard, tuple) and len(shard) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
          and 0 <= shard[0] < shard[1])
    if not ok:
        raise ValueError(f"shard: expected (rank, size) with 0 <= rank < size, got {shard!r}")
    size = shard[1]
    smallest = bs if drop_last or n % bs == 0 else n % bs
    if n and smallest < size:
        raise ValueError(f"shard: a batch of {smallest} example(s) cannot be split over "
                         f"{size} ranks (batch_size={bs}, {n} examples); use a batch size "
                         f"and data size giving every rank at least one example, or drop_last")
    checked: tuple[int, int] = shard  # its type is what the checks above established
    return checked


def fits_on_device(nbytes: int, backend: Backend, fraction: float = 0.5) -> bool:
    """True when ``backend`` is on a GPU and ``nbytes`` fit in ``fraction`` of its free memory.

    CPU backends return False: there, host gathering is already zero-transfer.
    """
    free = free_device_memory(backend)
    if free is None:
        return False
    return nbytes <= fraction * free
