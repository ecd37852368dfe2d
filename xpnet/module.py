"""Module and Parameter: named parameters, buffers, train/eval mode, state dicts, device moves."""

from __future__ import annotations

import functools
import inspect
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat
import numpy as np

from . import grad_mode, precision
from .backend import Backend, current, to_device, to_numpy
from .grad_mode import grad_enabled

__all__ = ["Module", "Parameter", "StateDictError", "check_finite_state"]


class StateDictError(ValueError):
    """A state dict does not fit the model (missing or unexpected keys, another shape or
    dtype); the message names the first misfit."""


def check_finite_state(state: dict[str, Any], owner: str) -> None:
    """StateDictError naming the first array of ``state`` that holds NaN or inf (weights of a
    diverged run would load and predict nonsense with no word)."""
    for k, v in state.items():
        a = np.asarray(to_numpy(v))
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise StateDictError(f"{owner}: {k!r} holds {bad} NaN or infinite value(s) of "
                                 f"{a.size}; expected finite weights (pass "
                                 "allow_nonfinite=True to load a diverged state on purpose)")

Array = Any


class Parameter:
    """A trainable array and its gradient.

    Gradients follow the textbook by default: each backward pass *assigns* ``grad``. Within
    one pass, a parameter used more than once (a module called twice, a Parameter shared by two
    modules) gets the *sum* of its uses' gradients: the first use's write assigns, writes from
    the backward of another forward call add (a backward that rewrites its own write assigns).
    When ``accumulate`` is set (:meth:`Module.accumulate_grads`), every write *adds* to a
    gradient already there (PyTorch's convention), so several backward passes sum up until
    ``grad`` is set to None (:meth:`Module.zero_grad`). Code that rewrites a finished gradient
    (clipping, averaging across processes) uses :meth:`replace_grad`, which always assigns.

    ``trainable = False`` freezes it: optimizers skip it (see :meth:`Module.freeze`).
    """

    __slots__ = ("_grad", "_grad_use", "accumulate", "data", "trainable")

    def __init__(self, data: Array, *, trainable: bool = True):
        self.data = data
        self._grad: Array | None = None
        self._grad_use: tuple[int, int] | None = None  # (pass, call) that last wrote grad
        self.accumulate = False
        self.trainable = trainable

    @property
    def grad(self) -> Array | None:
        return self._grad

    @grad.setter
    def grad(self, value: Array | None) -> None:
        old = self._grad
        use, last = grad_mode.backward_use(), self._grad_use
        again = use is not None and last is not None and last[0] == use[0] and last != use
        self._grad_use = use  # `again`: another forward call's use, in the same pass
        # `p.grad += g` hands back the same object: that is an in-place update, not a second use
        if value is None or old is None or value is old or not (self.accumulate or again):
            self._grad = value
        else:
            self._grad = old + value

    def replace_grad(self, value: Array | None) -> None:
        """Set ``grad`` to ``value`` whatever the accumulation mode (for gradient hooks)."""
        self._grad = value
        self._grad_use = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        frozen = "" if self.trainable else ", frozen"
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype}{frozen})"


_SERIALS = itertools.count()


def _dtype_name(dtype: Any) -> str:
    """``float32`` for NumPy's, torch's (``torch.float32``) and the standard's dtypes."""
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]


class _Call:
    """What one forward call of a module saved for its backward (see Module.save_for_backward)."""

    __slots__ = ("attrs", "pass_id", "precision", "record", "serial")

    def __init__(self, pass_id: int):
        self.pass_id = pass_id
        self.precision: tuple[Any, ...] | None = None  # the cast of an autocast call
        self.serial = next(_SERIALS)
        self.record: tuple[Any, ...] = ()
        self.attrs: list[str] = []  # attributes the forward set on the module (not per call)


def _install(cls: type, name: str, method: Callable[..., Any]) -> None:
    """Put a wrapping ``method`` on ``cls`` under ``name``, marked so that a subclass does not
    wrap it again."""
    method.__dict__["_xpnet_wrapped"] = True
    setattr(cls, name, method)


class Module:
    """Base class of layers and models.

    A subclass calls ``super().__init__()`` first, then assigns its parts as attributes:
    a :class:`Module` (``self.conv = Conv2d(...)``) becomes a named child and a
    :class:`Parameter` (or :meth:`add_param`) a named parameter, in assignment order, so
    ``parameters()``, checkpoints, device moves and ``train()``/``eval()`` reach them.
    Non-trainable state that checkpoints must keep (running statistics) is registered with
    :meth:`add_buffer`.

    The backward contract: ``forward(x)`` keeps what ``backward`` needs with
    :meth:`save_for_backward`; ``backward(dout, *, input_grad=True)`` reads it with
    :meth:`saved`, writes every parameter's gradient to ``param.grad`` and returns the
    gradient with respect to ``x`` (or None when ``input_grad=False``: the caller does not
    need it, as for a model's first layer). A backward may ignore ``input_grad`` and return
    the gradient anyway (the layers without parameters do: it is all their work). One written
    without the keyword, ``backward(self, dout)``, also runs (the gradient is then always
    computed), but does not type-check against this base class.

    One module object may be used any number of times (one activation after two layers, a
    shared convolution in two branches, tied weights): each forward call saves its own record,
    and each backward call takes the most recent one, so backward calls must come in the
    reverse order of the forward calls (as a chain rule written by hand does). The gradients of
    a shared parameter are summed over its uses. Records are kept for the latest forward pass
    only (the outermost forward call starts a pass), and under :func:`no_grad` for none.
    Gradients are assigned by each backward pass (the textbook's convention); after
    :meth:`accumulate_grads` they add up over passes until :meth:`zero_grad`.

    A module whose forward keeps values as attributes (``self._x = x``) instead of saving
    them is still fine when called once per pass; a second call in one pass is refused,
    because it would overwrite what the first call's backward needs.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_param_names", [])
        object.__setattr__(self, "_buffer_names", [])
        self.training = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a subclass's own ``forward`` and ``backward``: each forward call gets its own
        record (none under :func:`no_grad`); ``backward`` takes the latest one, refuses to
        run without one (a named RuntimeError instead of an AttributeError on an empty cache)
        and accepts ``input_grad`` even when written as ``backward(self, dout)``."""
        super().__init_subclass__(**kwargs)
        own_forward = cls.__dict__.get("forward")
        if own_forward is not None and not getattr(own_forward, "_xpnet_wrapped", False):
            @functools.wraps(own_forward)
            def forward(self: Module, *args: Any, **kw: Any) -> Any:
                if "_call" in self.__dict__:  # a subclass's forward calling its base's
                    return own_forward(self, *args, **kw)
                if not grad_enabled():  # keep nothing, and free what an older pass kept
                    with grad_mode.forward_call() as pass_id:
                        calls = self.__dict__.get("_calls")
                        if calls and calls[-1].pass_id != pass_id:
                            calls.clear()
                        if precision.active():
                            return precision.run_forward(self, own_forward, args, kw, None)
                        return own_forward(self, *args, **kw)
                with grad_mode.forward_call() as pass_id:
                    call = self._push_call(pass_id)
                    self.__dict__["_call"] = call
                    try:
                        if precision.active():
                            return precision.run_forward(self, own_forward, args, kw, call)
                        return own_forward(self, *args, **kw)
                    except BaseException:  # a refused input leaves no record behind
                        calls = self.__dict__["_calls"]
                        if calls and calls[-1] is call:
                            calls.pop()
                        raise
                    finally:
                        del self.__dict__["_call"]

            _install(cls, "forward", forward)
        own = cls.__dict__.get("backward")
        if own is None or getattr(own, "_xpnet_wrapped", False):
            return
        sig = inspect.signature(own)
        takes_flag = "input_grad" in sig.parameters or any(
            q.kind is inspect.Parameter.VAR_KEYWORD for q in sig.parameters.values())

        @functools.wraps(own)
        def backward(self: Module, dout: Array, *, input_grad: bool = True) -> Array | None:
            nested = "_saved" in self.__dict__  # a subclass's backward calling its base's
            if not nested:
                self.__dict__["_saved"] = self._pop_call()
            call = self.__dict__["_saved"]
            try:
                with grad_mode.backward_of(call.pass_id, call.serial):
                    if nested or call.precision is None:
                        return own(self, dout, input_grad=input_grad) if takes_flag \
                            else own(self, dout)
                    return precision.run_backward(
                        self, lambda d: own(self, d, input_grad=input_grad) if takes_flag
                        else own(self, d), dout, call)
            finally:
                if not nested:
                    del self.__dict__["_saved"]

        _install(cls, "backward", backward)

    # ------------------------------------------------------------------ per-call records
    def _push_call(self, pass_id: int) -> _Call:
        """Open this forward call's record; drop records left from an older pass."""
        calls = self.__dict__.get("_calls")
        if calls is None or (calls and calls[-1].pass_id != pass_id):
            calls = self.__dict__["_calls"] = []
        if calls and calls[-1].attrs:
            raise RuntimeError(
                f"{self!r} is called a second time in one forward pass, but its forward keeps "
                f"{', '.join(calls[-1].attrs)} as attributes, which this call would overwrite "
                "before the first call's backward reads them; keep them with "
                "self.save_for_backward(...) and read them with self.saved(), or build a "
                "second module")
        call = _Call(pass_id)
        calls.append(call)
        return call

    def _pop_call(self) -> _Call:
        """Take the latest forward call's record (the one this backward call belongs to)."""
        calls = self.__dict__.get("_calls")
        if not calls:
            raise RuntimeError(f"{self!r}: backward was called before forward; call forward "
                               "first (each forward call serves one backward call; a forward "
                               "under xpnet.no_grad() caches nothing; a new outermost forward "
                               "call, a new pass, drops what this module cached for an older "
                               "one: make both calls inside one Module's forward instead)")
        call: _Call = calls.pop()
        return call

    def save_for_backward(self, *values: Any) -> None:
        """Keep ``values`` for the backward of this forward call (nothing under no_grad)."""
        call = self.__dict__.get("_call")
        if call is not None:
            call.record = values

    def saved(self) -> tuple[Any, ...]:
        """In ``backward``: the values its forward call passed to :meth:`save_for_backward`."""
        call = self.__dict__.get("_saved")
        if call is None:
            raise RuntimeError(f"{type(self).__name__}.saved() is only valid inside backward")
        record: tuple[Any, ...] = call.record
        return record

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: name the usual cause for the registries
        if name in ("_children", "_param_names", "_buffer_names", "training"):
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"first ({name!r} was never set up)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        registry = self.__dict__.get("_children")
        if registry is None:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"before setting attributes (while setting {name!r})")
        if isinstance(value, Module):
            registry[name] = value
        else:
            registry.pop(name, None)
            if isinstance(value, (list, tuple)) and any(isinstance(v, Module) for v in value):
                raise TypeError(f"{type(self).__name__}.{name}: a {type(value).__name__} of "
                                "modules is not registered (its parameters would never be "
                                "trained or saved); wrap the layers in xpnet.Sequential(...)")
        if isinstance(value, Parameter) and name not in self._param_names:
            self._param_names.append(name)
        elif not isinstance(value, Parameter) and name in self._param_names \
                and value is not None:
            raise TypeError(f"{type(self).__name__}.{name} is a parameter; assign a Parameter "
                            f"(or change its .data), not {type(value).__name__}")
        call = self.__dict__.get("_call")
        if call is not None and name not in self._buffer_names and name not in registry \
                and name not in self._param_names and name not in call.attrs:
            call.attrs.append(name)  # a value kept outside the call's record
        object.__setattr__(self, name, value)

    def add_param(self, name: str, data: Array) -> Parameter:
        """Register a trainable array under a stable name and return its Parameter."""
        p = Parameter(data)
        setattr(self, name, p)
        return p

    def add_buffer(self, name: str, data: Array) -> None:
        """Register non-trainable state that is saved in checkpoints (running statistics)."""
        setattr(self, name, data)
        if name not in self._buffer_names:
            self._buffer_names.append(name)

    def children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules with their names, in the order they were assigned."""
        return iter(list(self._children.items()))

    # ------------------------------------------------------------------ traversal
    def modules(self, prefix: str = "") -> dict[str, Module]:
        """This module and every sub-module, keyed by dotted path ('' for this one). A module
        used at several places is listed once, at the first path it is reached by.

        Raises ValueError when a module contains itself (its forward would never end).
        """
        found: dict[str, Module] = {}
        seen: set[int] = set()
        above: dict[int, str] = {}

        def walk(m: Module, path: str) -> None:
            if id(m) in above:
                raise ValueError(f"a {type(m).__name__} contains itself: it is at "
                                 f"{above[id(m)] or '.'!r} "
                                 f"and again below it at {path!r}")
            if id(m) in seen:
                return
            seen.add(id(m))
            found[path] = m
            above[id(m)] = path
            for name, child in m.children():
                walk(child, f"{path}.{name}" if path else name)
            del above[id(m)]

        walk(self, prefix.rstrip("."))
        return found

    def parameters(self, prefix: str = "") -> dict[str, Parameter]:
        """All parameters, keyed by stable dotted names such as '0.W' or '3.gamma'. A shared
        module's parameters, or a Parameter assigned to two modules (tied weights), appear
        once, under the first name they are reached by."""
        out: dict[str, Parameter] = {}
        seen: set[int] = set()
        for path, m in self.modules(prefix).items():
            for n in m._param_names:
                p = getattr(m, n)
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                out[f"{path}.{n}" if path else n] = p
        return out

    def buffers(self, prefix: str = "") -> dict[str, Array]:
        """All buffers, keyed like :meth:`parameters`."""
        out = {}
        for path, m in self.modules(prefix).items():
            for n in m._buffer_names:
                out[f"{path}.{n}" if path else n] = getattr(m, n)
        return out

    def _owner(self, key: str) -> tuple[Module, str]:
        module: Module = self
        *path, leaf = key.split(".")
        for part in path:
            module = dict(module.children())[part]
        return module, leaf

    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active, batch statistics) here and in every child."""
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (dropout off, running statistics)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every gradient to None (the next backward assigns, also when accumulating)."""
        for p in self.parameters().values():
            p.grad = None

    def accumulate_grads(self, mode: bool = True) -> Module:
        """Make backward passes add into ``param.grad`` (True) or assign it (False, default).

        With accumulation on, call :meth:`zero_grad` after each optimizer step, as in PyTorch.
        The sum of K backward passes of mean losses is K times a mean gradient: scale each
        pass by 1/K (``train_step(..., grad_scale=1/K)``, as ``Trainer(accumulate=K)`` does; it
        also switches this on for the run and clears gradients after each step) to get the
        update of one batch of all K batches' examples.
        """
        for p in self.parameters().values():
            p.accumulate = bool(mode)
        return self

    def freeze(self) -> Module:
        """Stop training this module's parameters (``trainable = False``): optimizers skip
        them, and a model's backward computes no gradients below its last trainable layer
        (see :meth:`Sequential.backward`). Running statistics (BatchNorm) still update in
        training mode: call ``.eval()`` on the module to keep them too."""
        for p in self.parameters().values():
            p.trainable = False
        return self

    def unfreeze(self) -> Module:
        """Train this module's parameters again."""
        for p in self.parameters().values():
            p.trainable = True
        return self

    def has_trainable(self) -> bool:
        """True when some parameter here or below is trainable."""
        return any(p.trainable for p in self.parameters().values())

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameter scalars (only the trainable ones if ``trainable_only``)."""
        return sum(int(np.prod(p.shape)) for p in self.parameters().values()
                   if p.trainable or not trainable_only)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as host NumPy copies, keyed by stable names."""
        out = {k: np.array(to_numpy(p.data)) for k, p in self.parameters().items()}
        out.update({k: np.array(to_numpy(v)) for k, v in self.buffers().items()})
        return out

    def check_state_dict(self, state: Any, *, dtypes: bool = False,
                         allow_nonfinite: bool = False) -> None:
        """Raise :class:`StateDictError` unless ``state`` fits this model: the same parameter
        and buffer names, each with this model's shape (and dtype, with ``dtypes=True``, as a
        resumed run needs), all values finite unless ``allow_nonfinite``. Changes nothing."""
        if not isinstance(state, dict):
            hint = ("; to load a weights file or checkpoint use xpnet.load_weights(model, path)"
                    if isinstance(state, (str, os.PathLike)) or hasattr(state, "model")
                    else "")
            raise TypeError(f"{type(self).__name__}.load_state_dict: state must be a dict of "
                            f"arrays (from model.state_dict()), got {type(state).__name__}"
                            f"{hint}")
        expected = {k: (tuple(p.shape), p.data.dtype) for k, p in self.parameters().items()}
        expected.update({k: (tuple(v.shape), v.dtype) for k, v in self.buffers().items()})
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise StateDictError(f"state dict does not fit this model: missing {missing}, "
                                 f"unexpected {unexpected}")
        for k, (shape, dtype) in expected.items():
            saved = tuple(np.shape(state[k]))
            if saved != shape:
                raise StateDictError(f"parameter {k!r}: saved shape {saved} does not match "
                                     f"the model's {shape}")
            if dtypes and _dtype_name(state[k].dtype) != _dtype_name(dtype):
                raise StateDictError(f"parameter {k!r} was saved as "
                                     f"{_dtype_name(state[k].dtype)}, this model's is "
                                     f"{_dtype_name(dtype)}")
        if not allow_nonfinite:
            check_finite_state(state, f"{type(self).__name__}.load_state_dict")

    def load_state_dict(self, state: dict[str, Any], backend: Backend | None = None, *,
                        allow_nonfinite: bool = False) -> None:
        """Load arrays from :meth:`state_dict` (any backend's) onto the current backend.

        :meth:`check_state_dict` runs first: on a misfit nothing is loaded. NaN or inf values
        are refused unless ``allow_nonfinite=True`` (to inspect a diverged state).
        """
        self.check_state_dict(state, allow_nonfinite=allow_nonfinite)
        params, buffers = self.parameters(), self.buffers()
        for k in [*params, *buffers]:
            old = params[k].data if k in params else buffers[k]
            # a private copy: in-place optimizer steps must not write into the caller's dict
            new = to_device(np.array(to_numpy(state[k])), backend=backend)
            new = to_device(new, dtype=old.dtype, backend=backend)
            if k in params:
                params[k].data = new
                params[k].grad = None
            else:
                owner, leaf = self._owner(k)
                setattr(owner, leaf, new)

    def to_device(self, backend: Backend | None = None) -> Module:
        """Move every parameter and buffer to ``backend`` (default: the current one)."""
        b = backend or current()
        for p in self.parameters().values():
            p.data = to_device(to_numpy(p.data), backend=b)
            p.grad = None
        for k, v in self.buffers().items():
            owner, leaf = self._owner(k)
            setattr(owner, leaf, to_device(to_numpy(v), backend=b))
        return self

    def to_dtype(self, dtype: str) -> Module:
        """Cast every parameter and buffer to the floating ``dtype`` ('float32', 'float64');
        gradients are cleared. An optimizer's state follows at its next step. Feed inputs of
        the same dtype afterwards."""
        if dtype not in ("float16", "float32", "float64"):
            raise ValueError(f"{type(self).__name__}.to_dtype: dtype must be 'float16', "
                             f"'float32' or 'float64', got {dtype!r}")
        for p in self.parameters().values():
            xp = array_api_compat.array_namespace(p.data)
            p.data = xp.astype(p.data, getattr(xp, dtype))
            p.grad = None
        for k, v in self.buffers().items():
            owner, leaf = self._owner(k)
            xp = array_api_compat.array_namespace(v)
            setattr(owner, leaf, xp.astype(v, getattr(xp, dtype)))
        return self

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of the layers and their parameter counts; given ``input_shape`` (one
        example, without the batch axis) also each layer's output shape, found by one forward
        pass of a batch of two zeros in evaluation mode (running statistics are not touched)."""
        from .summary import summarize

        return summarize(self, input_shape)

    # ------------------------------------------------------------------ calling
    def forward(self, x: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} has no forward(x); a Module "
                                  "subclass must define forward(x) and backward(dout)")

    def backward(self, dout: Array, *, input_grad: bool = True) -> Array | None:
        """Write parameter gradients; return d(loss)/d(input), or None if not ``input_grad``."""
        raise NotImplementedError(f"{type(self).__name__} has no backward(dout); a Module "
                                  "subclass must define forward(x) and backward(dout)")

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
