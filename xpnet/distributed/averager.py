"""The gradient averager: one packed Allreduce per dtype (or bucket) and step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from .. import validate
from .communicator import Communicator, world

__all__ = ["GradientAverager"]

Array = Any


@dataclass
class _Bucket:
    dtype: str
    names: list[str]
    sizes: list[int]
    shapes: list[tuple[int, ...]]
    buf: Array = None


class GradientAverager:
    """A gradient hook that averages ``param.grad`` over all ranks before the optimizer update.

    Gradients are packed into one contiguous buffer per dtype, or into buckets of at most
    ``bucket_bytes`` (a larger parameter gets a bucket of its own), and each buffer is summed
    with one ``Allreduce`` per step: never one message per parameter, never pickled. After the
    hook, each ``param.grad`` is a view of its bucket (valid until the next step).

    ``scale`` multiplies the sum (default ``1/size``: the mean). ``stats`` counts calls,
    Allreduce messages, bytes and host seconds inside the Allreduce calls, for benchmarks (on
    CPU that includes waiting for the slowest rank; with NCCL it is the launch only, the
    reduction itself running on the CUDA stream).

    Use ``optimizer.register_grad_hook(GradientAverager(comm))``, or :meth:`attach`.
    """

    def __init__(self, comm: Communicator | None = None, *, bucket_bytes: int | None = None):
        self.comm = comm or world()
        self.bucket_bytes = (None if bucket_bytes is None else
                             validate.positive_int("GradientAverager", "bucket_bytes",
                                                   bucket_bytes))
        self.scale = 1.0 / self.comm.size
        self._buckets: list[_Bucket] | None = None
        self._layout: tuple[tuple[str, str, tuple[int, ...]], ...] | None = None
        self.stats = {"steps": 0, "messages": 0, "bytes": 0, "seconds": 0.0}

    @classmethod
    def attach(cls, optimizer: Any, comm: Communicator | None = None, **kw: Any
               ) -> GradientAverager:
        """Register a new averager on ``optimizer`` and return it."""
        hook = cls(comm, **kw)
        optimizer.register_grad_hook(hook)
        return hook

    def _plan(self, params: dict[str, Any]) -> list[_Bucket]:
        buckets: list[_Bucket] = []
        open_by_dtype: dict[str, _Bucket] = {}
        for name, p in params.items():
            g = p.grad
            dtype = str(g.dtype)
            size = int(np.prod(tuple(g.shape)))
            nbytes = size * _itemsize(g)
            b = open_by_dtype.get(dtype)
            if b is None or (self.bucket_bytes is not None and b.sizes and
                             (sum(b.sizes) * _itemsize(g) + nbytes) > self.bucket_bytes):
                b = _Bucket(dtype, [], [], [])
                buckets.append(b)
                open_by_dtype[dtype] = b
            b.names.append(name)
            b.sizes.append(size)
            b.shapes.append(tuple(g.shape))
        return buckets

    def buckets(self) -> list[tuple[str, int]]:
        """(dtype, element count) of each bucket, once the first step has planned them."""
        return [(b.dtype, sum(b.sizes)) for b in self._buckets or []]

    def __call__(self, params: dict[str, Any]) -> None:
        if self.comm.size == 1:
            return
        layout = tuple((n, str(p.grad.dtype), tuple(p.grad.shape)) for n, p in params.items())
        if self._buckets is None or layout != self._layout:  # first step, or new gradients
            self._buckets, self._layout = self._plan(params), layout
        for b in self._buckets:
            first = params[b.names[0]].grad
            xp = array_api_compat.array_namespace(first)
            total = sum(b.sizes)
            if b.buf is None or b.buf.shape[0] != total:
                b.buf = xp.empty((total,), dtype=first.dtype,
                                 device=array_api_compat.device(first))
            off = 0
            for name, size in zip(b.names, b.sizes):
                b.buf[off:off + size] = xp.reshape(params[name].grad, (-1,))
                off += size
            t0 = time.perf_counter()
            out = self.comm.allreduce_(b.buf)
            self.stats["seconds"] += time.perf_counter() - t0
            self.stats["messages"] += 1
            self.stats["bytes"] += total * _itemsize(first)
            if self.scale != 1.0:
                out *= self.scale
            b.buf = out
            off = 0
            for name, size, shape in zip(b.names, b.sizes, b.shapes):
                params[name].replace_grad(xp.reshape(out[off:off + size], shape))
                off += size
        self.stats["steps"] += 1


def _itemsize(x: Array) -> int:
    dtype = x.dtype
    size = getattr(dtype, "itemsize", None)
    if size is None:
        xp = array_api_compat.array_namespace(x)
        info = xp.finfo(dtype) if xp.isdtype(dtype, "real floating") else xp.iinfo(dtype)
        size = info.bits // 8
    return int(size)
