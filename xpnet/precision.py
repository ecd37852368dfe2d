"""Mixed precision: the policy layers follow (:func:`autocast`) and dynamic loss scaling
(:class:`LossScaler`).

A policy is ``"float32"`` (nothing changes), ``"mixed16"`` (float16 compute) or ``"bf16"``
(bfloat16 compute). Under :func:`autocast` the parameters stay as they are (float32: the master
weights, which the optimizer updates); a module whose class sets ``autocast = True`` (Linear,
Conv2d) runs its forward and backward with its input, its own parameters and the incoming
gradient cast to the low dtype, and its parameters' gradients are handed back in the
parameters' dtype. A module with ``autocast = False`` (BatchNorm, LayerNorm, Softmax, or a
custom layer that needs the range) runs in float32. Every other module (activations, pooling,
dropout, containers) follows its input's dtype. The input gradient a module returns has its
input's dtype, as in PyTorch's autocast. The loss is computed in float32 (the Trainer casts the
model output).

float16 has a small range (largest 65504, smallest normal 6e-5): small gradients underflow to
0, so ``mixed16`` scales the loss up and the gradients back down (:class:`LossScaler`).
bfloat16 has float32's range, so ``bf16`` needs no scaling.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from typing import Any

from array_api_compat import array_namespace, is_array_api_obj

from . import validate

__all__ = ["POLICIES", "LossScaler", "PrecisionUnsupportedError", "autocast",
           "compute_dtype", "low_dtype"]

Array = Any

POLICIES = ("float32", "mixed16", "bf16")
_LOW = {"mixed16": "float16", "bf16": "bfloat16"}
_active: contextvars.ContextVar[str | None] = contextvars.ContextVar("xpnet_precision",
                                                                     default=None)


class PrecisionUnsupportedError(ValueError):
    """The array library has no array dtype for the policy (array_api_strict has neither
    float16 nor bfloat16; NumPy has no bfloat16)."""


def check(owner: str, precision: Any) -> str:
    """``precision`` validated: one of :data:`POLICIES`."""
    value: str = validate.choice(owner, "precision", precision, POLICIES)
    return value


def low_dtype(xp: Any, precision: str) -> Any:
    """The compute dtype of ``precision`` in namespace ``xp`` (None for "float32").

    Raises :class:`PrecisionUnsupportedError` when ``xp`` has no such dtype, naming the
    library and what works instead.
    """
    name = _LOW.get(check("precision", precision))
    if name is None:
        return None
    dtype = getattr(xp, name, None)
    if dtype is None:
        lib = getattr(xp, "__name__", str(xp)).replace("array_api_compat.", "")
        raise PrecisionUnsupportedError(
            f"precision {precision!r}: {lib} has no {name} dtype; expected 'float32' there, "
            "'mixed16' (float16) on numpy or torch, 'bf16' (bfloat16) on torch")
    return dtype


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """Run the forward and backward passes inside the block under ``precision``, as
    ``torch.autocast`` does: Linear and Conv2d compute in the low dtype, the parameters stay
    float32. Backward must run inside the block as well (the Trainer does both)."""
    token = _active.set(None if check("autocast", precision) == "float32" else precision)
    try:
        yield
    finally:
        _active.reset(token)


def active() -> str | None:
    """The policy of the enclosing :func:`autocast` block (None: none, or "float32")."""
    return _active.get()


def compute_dtype(module: Any, xp: Any) -> Any:
    """The dtype ``module`` computes in under the active policy, None to leave it as it is:
    the low dtype for ``autocast = True``, float32 for ``autocast = False``."""
    precision = _active.get()
    mode = getattr(type(module), "autocast", None)
    if precision is None or mode is None:
        return None
    return low_dtype(xp, precision) if mode else xp.float32


def _cast(value: Any, dtype: Any) -> Any:
    if not is_array_api_obj(value):
        return value
    xp = array_namespace(value)
    if value.dtype == dtype or not xp.isdtype(value.dtype, "real floating"):
        return value
    return xp.astype(value, dtype)


def run_forward(module: Any, forward: Callable[..., Any], args: tuple[Any, ...],
                kw: dict[str, Any], call: Any) -> Any:
    """Module's forward wrapper under a policy: cast the inputs (and, for ``autocast =
    True``, the module's own parameters for the duration of the call) to the compute dtype.
    What backward needs to do the same (the input dtype, the cast parameters) goes on the
    per-call record ``call`` (None under no_grad)."""
    x = next((a for a in args if is_array_api_obj(a)), None)
    dtype = compute_dtype(module, array_namespace(x)) if x is not None else None
    if x is None or dtype is None:
        return forward(module, *args, **kw)
    cast = _cast_params(module, dtype)
    if call is not None:
        call.precision = (dtype, x.dtype, cast)
    with _swapped(module, cast):
        return forward(module, *(_cast(a, dtype) for a in args), **kw)


def run_backward(module: Any, backward: Callable[[Array], Any], dout: Array,
                 call: Any) -> Any:
    """Module's backward wrapper: the forward call's compute dtype again, the parameters'
    gradients cast to the parameters' dtype, the input gradient to the input's dtype."""
    saved = getattr(call, "precision", None)
    if saved is None:
        return backward(dout)
    dtype, in_dtype, cast = saved
    with _swapped(module, cast):
        dx = backward(_cast(dout, dtype))
    for name in cast:
        p = getattr(module, name)
        if p._grad is not None and p._grad.dtype != p.data.dtype:
            p._grad = array_namespace(p.data).astype(p._grad, p.data.dtype)
    return _cast(dx, in_dtype) if dx is not None else None


def _cast_params(module: Any, dtype: Any) -> dict[str, Array]:
    """The module's own parameters in the low dtype (``autocast = True`` only)."""
    if not getattr(type(module), "autocast", None):
        return {}
    out = {}
    for name in module._param_names:
        p = getattr(module, name)
        if p is not None:
            out[name] = _cast(p.data, dtype)
    return out


@contextlib.contextmanager
def _swapped(module: Any, cast: dict[str, Array]) -> Iterator[None]:
    """The module's parameters hold the cast arrays inside the block, their own after it."""
    params = {name: getattr(module, name) for name in cast}
    kept = {name: p.data for name, p in params.items()}
    try:
        for name, p in params.items():
            p.data = cast[name]
        yield
    finally:
        for name, p in params.items():
            p.data = kept[name]


def output(y: Array) -> Array:
    """The model output for the loss: a half-precision output cast to float32 (the loss, its
    softmax and its reductions run in float32)."""
    if _active.get() is None or not is_array_api_obj(y):
        return y
    xp = array_namespace(y)
    return xp.astype(y, xp.float32) if y.dtype in _low_dtypes(xp) else y


def _low_dtypes(xp: Any) -> list[Any]:
    return [d for d in (getattr(xp, n, None) for n in _LOW.values()) if d is not None]


class LossScaler:
    """Dynamic loss scaling for float16 training (as PyTorch's ``GradScaler`` and Keras'
    ``LossScaleOptimizer``): the loss gradient is multiplied by ``scale`` so that small
    gradients do not underflow in float16; :meth:`unscale` divides the parameters' gradients
    by it before the optimizer step (so clipping and weight decay see true gradients). When a
    gradient holds inf or NaN the step is skipped and the scale halved; after
    ``growth_interval`` finite steps in a row it doubles.

    Parameters
    ----------
    init_scale : the first scale (default 2**16, as PyTorch).
    growth_interval : finite steps between doublings (default 2000, as PyTorch).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.scale = validate.positive_float("LossScaler", "init_scale", init_scale)
        self.growth_interval = validate.positive_int("LossScaler", "growth_interval",
                                                     growth_interval)
        self.good_steps = 0  # finite steps since the last change of scale
        self.skipped = 0  # steps skipped for inf/NaN gradients, in all

    def unscale(self, params: dict[str, Any]) -> bool:
        """Divide every gradient in ``params`` by the scale and update the scale; return
        whether the step may go on (False: a gradient was not finite, the gradients were
        cleared and the scale halved). One host sync."""
        grads = [p.grad for p in params.values() if p.grad is not None]
        if not grads:
            return True
        xp = array_namespace(grads[0])
        finite = bool(xp.all(xp.stack([xp.all(xp.isfinite(g)) for g in grads])))
        if not finite:
            for p in params.values():
                p.replace_grad(None)
            self.scale = max(self.scale * 0.5, 2.0 ** -24)
            self.good_steps = 0
            self.skipped += 1
            return False
        inv = 1.0 / self.scale
        for p in params.values():
            if p.grad is not None:
                p.replace_grad(p.grad * inv)
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= 2.0
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "growth_interval": self.growth_interval,
                "good_steps": self.good_steps, "skipped": self.skipped}

    def check_state_dict(self, state: Any) -> None:
        """Raise ``StateDictError`` unless ``state`` is a saved scaler of this one's
        ``growth_interval``; changes nothing."""
        from .module import StateDictError

        keys = ("scale", "growth_interval", "good_steps", "skipped")
        if not isinstance(state, dict) or sorted(state) != sorted(keys):
            raise StateDictError(f"LossScaler: state must be a dict with keys {list(keys)}, "
                                 f"got {state!r}")
        scale = state["scale"]
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise StateDictError(f"LossScaler: saved scale must be a positive number, got "
                                 f"{scale!r}")
        if state["growth_interval"] != self.growth_interval:
            raise StateDictError(f"LossScaler: saved growth_interval is "
                                 f"{state['growth_interval']!r}; expected "
                                 f"{self.growth_interval} (this run's)")
        for k in ("good_steps", "skipped"):
            if not isinstance(state[k], int) or isinstance(state[k], bool) or state[k] < 0:
                raise StateDictError(f"LossScaler: saved {k} must be a non-negative int, "
                                     f"got {state[k]!r}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self.scale = float(state["scale"])
        self.good_steps, self.skipped = int(state["good_steps"]), int(state["skipped"])
