"""Module and Parameter: named parameters, buffers, train/eval mode, state dicts, device moves."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from .backend import Backend, check_same_device, current, to_device, to_numpy

__all__ = ["Module", "Parameter", "StateDictError", "check_input", "grad_enabled", "no_grad"]

_GRAD = threading.local()


def grad_enabled() -> bool:
    """False inside :func:`no_grad` (in this thread)."""
    return getattr(_GRAD, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes inside keep nothing for backward (PyTorch's ``torch.no_grad``, Chainer's
    ``no_backprop_mode``): each layer drops the arrays it lists in ``_caches`` as soon as its
    forward returns, so evaluating a batch holds about two activations at a time instead of
    every layer's mask and input. :func:`xpnet.train.evaluate`, :func:`xpnet.train.predict`
    and :meth:`Module.summary` run inside it. A backward after such a forward raises a
    RuntimeError."""
    before = grad_enabled()
    _GRAD.enabled = False
    try:
        yield
    finally:
        _GRAD.enabled = before


class StateDictError(ValueError):
    """A state dict does not fit the model (missing or unexpected keys, another shape or
    dtype); the message names the first misfit."""

Array = Any


class Parameter:
    """A trainable array and its gradient.

    Gradients follow the textbook by default: each ``backward`` *assigns* ``grad``. When
    ``accumulate`` is set (:meth:`Module.accumulate_grads`), an assignment *adds* to a gradient
    already there (PyTorch's convention), so several backward passes sum up until ``grad`` is
    set to None (:meth:`Module.zero_grad`). Code that rewrites a finished gradient (clipping,
    averaging across processes) uses :meth:`replace_grad`, which always assigns.

    ``trainable = False`` freezes it: optimizers skip it (see :meth:`Module.freeze`).
    """

    __slots__ = ("_grad", "accumulate", "data", "trainable")

    def __init__(self, data: Array, *, trainable: bool = True):
        self.data = data
        self._grad: Array | None = None
        self.accumulate = False
        self.trainable = trainable

    @property
    def grad(self) -> Array | None:
        return self._grad

    @grad.setter
    def grad(self, value: Array | None) -> None:
        old = self._grad
        # `p.grad += g` hands back the same object: that is an in-place update, not a second use
        if value is None or old is None or not self.accumulate or value is old:
            self._grad = value
        else:
            self._grad = old + value

    def replace_grad(self, value: Array | None) -> None:
        """Set ``grad`` to ``value`` whatever the accumulation mode (for gradient hooks)."""
        self._grad = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        frozen = "" if self.trainable else ", frozen"
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype}{frozen})"


def _dtype_name(dtype: Any) -> str:
    """``float32`` for NumPy's, torch's (``torch.float32``) and the standard's dtypes."""
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]


def _shape(x: Any) -> tuple | str:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def check_input(layer: Module, x: Any, ndim: int, expect: str, like: Array | None = None) -> Any:
    """Validate a layer input where the user called in; return its namespace.

    Raises ValueError naming the layer, the shape given and the shape expected; TypeError for a
    non-floating input; DeviceMismatchError when x and the layer's parameters cannot be combined.
    """
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(f"{layer!r}: input x must be an array, got {type(x).__name__}; "
                        "move host data with xpnet.to_device(x)")
    if x.ndim != ndim:
        raise ValueError(f"{layer!r}: input x has shape {_shape(x)}; expected {expect}")
    xp = array_api_compat.array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{layer!r}: input x has dtype {x.dtype}; expected a floating dtype "
                        "(float32 or float64)")
    if like is not None:
        check_same_device(x, like, "input x", f"{layer!r} parameters")
        if x.dtype != like.dtype:
            raise TypeError(f"{layer!r}: input x has dtype {x.dtype} but the parameters are "
                            f"{like.dtype}; cast the input or build the layer with that dtype")
    return xp


class Module:
    """Base class of layers and models.

    A subclass calls ``super().__init__()`` first, then assigns its parts as attributes:
    a :class:`Module` (``self.conv = Conv2d(...)``) becomes a named child and a
    :class:`Parameter` (or :meth:`add_param`) a named parameter, in assignment order, so
    ``parameters()``, checkpoints, device moves and ``train()``/``eval()`` reach them.
    Non-trainable state that checkpoints must keep (running statistics) is registered with
    :meth:`add_buffer`.

    The backward contract: ``forward(x)`` caches what ``backward`` needs;
    ``backward(dout, *, input_grad=True)`` writes every parameter's gradient to
    ``param.grad`` and returns the gradient with respect to ``x`` (or None when
    ``input_grad=False``: the caller does not need it, as for a model's first layer).
    A subclass may define ``backward(self, dout)`` without the keyword; it is then always
    computed. Gradients are assigned by default (the textbook's convention); after
    :meth:`accumulate_grads` they add up over backward passes until :meth:`zero_grad`.

    One module object may appear only once in a model: its caches hold one input, so a
    second use would give wrong gradients. Build a second layer instead.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_param_names", [])
        object.__setattr__(self, "_buffer_names", [])
        self.training = True

    #: the attributes a forward caches for backward, dropped after a forward under
    #: :func:`no_grad`; a subclass lists the ones it adds (its bases' are dropped too), and
    #: unlisted caches are simply kept
    _caches: tuple[str, ...] = ()
    _all_caches: tuple[str, ...] = ()  # _caches over the class hierarchy (set per subclass)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a subclass's own ``forward`` and ``backward``: ``forward`` notes that it ran,
        ``backward`` refuses to run before it (a named RuntimeError instead of an
        AttributeError on an empty cache) and accepts ``input_grad`` even when written as
        ``backward(self, dout)``."""
        super().__init_subclass__(**kwargs)
        own_caches = cls.__dict__.get("_caches", ())
        if isinstance(own_caches, str) or not all(isinstance(n, str) for n in own_caches):
            raise TypeError(f"{cls.__name__}._caches must be a tuple of attribute names, got "
                            f"{own_caches!r}")
        cls._all_caches = tuple(dict.fromkeys(
            n for klass in reversed(cls.__mro__) for n in klass.__dict__.get("_caches", ())))
        own_forward = cls.__dict__.get("forward")
        if own_forward is not None and not getattr(own_forward, "_xpnet_wrapped", False):
            @functools.wraps(own_forward)
            def forward(self: Module, *args: Any, **kw: Any) -> Any:
                if grad_enabled():
                    self.__dict__["_forwarded"] = True
                    return own_forward(self, *args, **kw)
                self.__dict__.pop("_forwarded", None)
                out = own_forward(self, *args, **kw)
                for name in type(self)._all_caches:  # keep nothing for a backward
                    self.__dict__[name] = None
                return out

            forward._xpnet_wrapped = True
            cls.forward = forward
        own = cls.__dict__.get("backward")
        if own is None or getattr(own, "_xpnet_wrapped", False):
            return
        sig = inspect.signature(own)
        takes_flag = "input_grad" in sig.parameters or any(
            q.kind is inspect.Parameter.VAR_KEYWORD for q in sig.parameters.values())

        @functools.wraps(own)
        def backward(self: Module, dout: Array, *, input_grad: bool = True) -> Array:
            if "_forwarded" not in self.__dict__:
                raise RuntimeError(f"{self!r}: backward was called before forward; call "
                                   "forward first (backward uses what forward cached; a "
                                   "forward under xpnet.no_grad() caches nothing)")
            if takes_flag:
                return own(self, dout, input_grad=input_grad)
            return own(self, dout)

        backward._xpnet_wrapped = True
        cls.backward = backward

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
            for other, child in registry.items():
                if child is value and other != name:
                    raise ValueError(f"{type(self).__name__}: the same {value!r} is assigned "
                                     f"as {other!r} and {name!r}; a module can be used once "
                                     "in a model (its cache holds one input): build another")
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
        """This module and every sub-module, keyed by dotted path ('' for this one).

        Raises ValueError when one module object appears twice (see the class docstring).
        """
        found: dict[str, Module] = {}
        seen: dict[int, str] = {}

        def walk(m: Module, path: str) -> None:
            if id(m) in seen:
                raise ValueError(f"{m!r} is used twice in one model, as {seen[id(m)] or '.'!r} "
                                 f"and {path or '.'!r}; a module can be used once (its cache "
                                 "holds one input): build a second layer instead")
            seen[id(m)] = path
            found[path] = m
            for name, child in m.children():
                walk(child, f"{path}.{name}" if path else name)

        walk(self, prefix.rstrip("."))
        return found

    def parameters(self, prefix: str = "") -> dict[str, Parameter]:
        """All parameters, keyed by stable dotted names such as '0.W' or '3.gamma'."""
        out: dict[str, Parameter] = {}
        names: dict[int, str] = {}
        for path, m in self.modules(prefix).items():
            for n in m._param_names:
                p = getattr(m, n)
                if p is None:
                    continue
                key = f"{path}.{n}" if path else n
                if id(p) in names:
                    raise ValueError(f"one Parameter is registered twice, as {names[id(p)]!r} "
                                     f"and {key!r}; tied weights are not supported (each use "
                                     "would overwrite the other's gradient)")
                names[id(p)] = key
                out[key] = p
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
        """True when some parameter here or below is trainable (called every backward: a
        plain walk, without the checks of :meth:`modules`)."""
        for n in self._param_names:
            p = getattr(self, n)
            if p is not None and p.trainable:
                return True
        return any(child.has_trainable() for _, child in self.children())

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

    def check_state_dict(self, state: Any, *, dtypes: bool = False) -> None:
        """Raise :class:`StateDictError` unless ``state`` fits this model: the same parameter
        and buffer names, each with this model's shape (and dtype, with ``dtypes=True``, as a
        resumed run needs). Changes nothing."""
        if not isinstance(state, dict):
            raise StateDictError(f"state dict must be a dict of arrays (from "
                                 f"Module.state_dict()), got {type(state).__name__}")
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

    def load_state_dict(self, state: dict[str, Any], backend: Backend | None = None) -> None:
        """Load arrays from :meth:`state_dict` (any backend's) onto the current backend.

        :meth:`check_state_dict` runs first: on a misfit nothing is loaded.
        """
        self.check_state_dict(state)
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

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """A table of the layers' output shapes and parameter counts for inputs of
        ``input_shape`` (one example, without the batch axis), found by one forward pass of
        a batch of two zeros in evaluation mode (so running statistics are not touched)."""
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
