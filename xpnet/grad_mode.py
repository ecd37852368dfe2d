"""Gradient mode: :func:`no_grad`, and the forward-pass counter that bounds what modules keep.

Every forward call made with gradients enabled belongs to a *pass*: the outermost
``Module.forward`` call starts one, and the calls it makes (children, a module used twice)
belong to it. A module keeps one record per call of the latest pass only; records of an older
pass are dropped at its next call, so repeated forwards without a backward hold at most one
pass. Gradients written during the backward of one pass add up over a module's uses.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["grad_enabled", "no_grad"]

_STATE = threading.local()


def grad_enabled() -> bool:
    """False inside :func:`no_grad` (in this thread)."""
    return getattr(_STATE, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes inside keep nothing for backward (PyTorch's ``torch.no_grad``, Chainer's
    ``no_backprop_mode``): no layer saves a record, so evaluating a batch holds about two
    activations at a time instead of every layer's mask and input.
    :func:`xpnet.train.evaluate`, :func:`xpnet.train.predict` and :meth:`Module.summary` run
    inside it. A backward after such a forward raises a RuntimeError."""
    before = grad_enabled()
    _STATE.enabled = False
    try:
        yield
    finally:
        _STATE.enabled = before


def current_pass() -> int:
    """The number of the latest forward pass started in this thread (0 before any)."""
    return getattr(_STATE, "pass_id", 0)


@contextlib.contextmanager
def forward_call() -> Iterator[int]:
    """Mark one forward call; the outermost one starts a new pass. Yields the pass number."""
    depth = getattr(_STATE, "depth", 0)
    if depth == 0:
        _STATE.pass_id = current_pass() + 1
    _STATE.depth = depth + 1
    try:
        yield _STATE.pass_id
    finally:
        _STATE.depth = depth


def backward_use() -> tuple[int, int] | None:
    """(pass, call serial) of the backward call running in this thread, or None outside one."""
    return getattr(_STATE, "backward", None)


@contextlib.contextmanager
def backward_of(pass_id: int, serial: int) -> Iterator[None]:
    """Mark the backward of forward call ``serial`` of pass ``pass_id``: gradients written by
    different calls of one pass add up."""
    before = backward_use()
    _STATE.backward = (pass_id, serial)
    try:
        yield
    finally:
        _STATE.backward = before
