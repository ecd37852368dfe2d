"""``Module.summary``: per-layer parameter counts (and output shapes, given an input shape) as a
text table.

This module depends on :mod:`xpnet.module`, never the reverse at import time: ``Module.summary``
imports it when called, so ``import xpnet.module`` does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from .backend import current
from .grad_mode import no_grad
from .module import Module

__all__ = ["summarize"]


def _own_params(m: Module) -> tuple[int, int]:
    total = trainable = 0
    for n in m._param_names:
        p = getattr(m, n)
        if p is not None:
            size = int(np.prod(p.shape))
            total += size
            trainable += size if p.trainable else 0
    return total, trainable


def _leaves(model: Module) -> list[tuple[str, Module]]:
    """(path, module) for every row: the layers, skipping containers without their own
    parameters (their children have the rows)."""
    return [(path, m) for path, m in model.modules().items()
            if not path or not (list(m.children()) and not _own_params(m)[0])]


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], footer: str) -> str:
    """Left-aligned text columns, right-aligned counts (the last two), a rule under the
    header and the footer line."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    counts = len(header) - 2
    lines = ["  ".join(c.ljust(w) if i < counts else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(footer)
    return "\n".join(lines)


def _totals(model: Module) -> str:
    n, t = model.num_parameters(), model.num_parameters(trainable_only=True)
    return f"total: {n:,} parameters, {t:,} trainable, {n - t:,} frozen"


def summarize(model: Module, input_shape: tuple[int, ...] | None = None) -> str:
    """See :meth:`Module.summary`."""
    if input_shape is None:
        rows = []
        for path, m in _leaves(model):
            total, trainable = _own_params(m)
            if path or total:
                rows.append((path or "(model)", type(m).__name__, f"{total:,}",
                             f"{trainable:,}"))
        return _table(("layer", "type", "params", "trainable"), rows,
                      _totals(model) + "; for output shapes pass the shape of one example, "
                      "e.g. summary((1, 28, 28))")
    return _with_shapes(model, input_shape)


def _with_shapes(model: Module, input_shape: tuple[int, ...]) -> str:
    """The table with each layer's output shape, from one forward pass of two zeros."""
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ValueError(f"summary: input_shape must be a tuple of positive integers (one "
                         f"example, no batch axis), got {input_shape!r}")
    params = list(model.parameters().values())
    if params:
        like = params[0].data
        xp, dtype, dev = array_namespace(like), like.dtype, device(like)
    else:
        b = current()
        xp, dtype, dev = b.xp, b.xp.float32, b.device
    x = xp.zeros((2, *input_shape), dtype=dtype, device=dev)
    rows: list[tuple[str, str, str, int, int]] = []
    seen: set[str] = set()
    patched = []
    for path, m in _leaves(model):
        original = m.forward

        def spy(*args: Any, _m: Module = m, _path: str = path, _f: Any = original,
                **kw: Any) -> Any:
            out = _f(*args, **kw)
            if _path not in seen:
                seen.add(_path)
                shape = tuple(getattr(out, "shape", ()))
                total, trainable = _own_params(_m)
                rows.append((_path or "(model)", type(_m).__name__,
                             str(("N", *shape[1:])).replace("'", ""), total, trainable))
            return out

        if path:  # the model's own forward is called directly below
            object.__setattr__(m, "forward", spy)
            patched.append(m)
    was_training = model.training
    model.eval()
    try:
        with no_grad():  # its batch of zeros must not stand in for a training batch's caches
            out = model.forward(x)
    finally:
        for m in patched:
            del m.__dict__["forward"]
        model.train(was_training)
    total, trainable = _own_params(model)
    if total or not rows:
        rows.insert(0, ("(model)", type(model).__name__,
                        str(("N", *tuple(out.shape)[1:])).replace("'", ""), total, trainable))
    cells = [(a, b, c, f"{d:,}", f"{e:,}") for a, b, c, d, e in rows]
    return _table(("layer", "type", "output shape", "params", "trainable"), cells,
                  f"{_totals(model)}; input (N, {', '.join(map(str, input_shape))})")
