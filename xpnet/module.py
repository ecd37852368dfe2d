"""Module and Parameter: named parameters, buffers, train/eval mode, state dicts, device moves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from .backend import Backend, check_same_device, current, to_device, to_numpy

__all__ = ["Module", "Parameter", "check_input"]

Array = Any


class Parameter:
    """A trainable array and the gradient the last ``backward`` wrote for it."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Array):
        self.data = data
        self.grad: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


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
    """Base class of layers and containers.

    Subclasses register trainable arrays with :meth:`add_param` and non-trainable state (running
    statistics) with :meth:`add_buffer`, implement ``forward(x)`` and ``backward(dout) -> dx``,
    and write each parameter's gradient into ``param.grad`` during ``backward``.
    """

    def __init__(self) -> None:
        self.training = True
        self._param_names: list[str] = []
        self._buffer_names: list[str] = []

    # ------------------------------------------------------------------ registration
    def add_param(self, name: str, data: Array) -> Parameter:
        """Register a trainable array under a stable name and return its Parameter."""
        p = Parameter(data)
        setattr(self, name, p)
        self._param_names.append(name)
        return p

    def add_buffer(self, name: str, data: Array) -> None:
        """Register non-trainable state that is saved in checkpoints (running statistics)."""
        setattr(self, name, data)
        self._buffer_names.append(name)

    def children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules with their names (containers override this)."""
        return iter(())

    # ------------------------------------------------------------------ traversal
    def parameters(self, prefix: str = "") -> dict[str, Parameter]:
        """All parameters, keyed by stable dotted names such as '0.W' or '3.gamma'."""
        out = {prefix + n: getattr(self, n) for n in self._param_names}
        for name, child in self.children():
            out.update(child.parameters(f"{prefix}{name}."))
        return out

    def buffers(self, prefix: str = "") -> dict[str, Array]:
        """All buffers, keyed like :meth:`parameters`."""
        out = {prefix + n: getattr(self, n) for n in self._buffer_names}
        for name, child in self.children():
            out.update(child.buffers(f"{prefix}{name}."))
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
        """Forget all gradients."""
        for p in self.parameters().values():
            p.grad = None

    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(int(np.prod(p.shape)) for p in self.parameters().values())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as host NumPy copies, keyed by stable names."""
        out = {k: np.array(to_numpy(p.data)) for k, p in self.parameters().items()}
        out.update({k: np.array(to_numpy(v)) for k, v in self.buffers().items()})
        return out

    def load_state_dict(self, state: dict[str, Any], backend: Backend | None = None) -> None:
        """Load arrays from :meth:`state_dict` (any backend's) onto the current backend.

        Every key must be present with the same shape; the first mismatch is named.
        """
        expected = {k: p.shape for k, p in self.parameters().items()}
        expected.update({k: tuple(v.shape) for k, v in self.buffers().items()})
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise KeyError(f"state dict does not fit this model: missing {missing}, "
                           f"unexpected {unexpected}")
        for k, shape in expected.items():
            if tuple(np.shape(state[k])) != shape:
                raise ValueError(f"parameter {k!r}: saved shape {tuple(np.shape(state[k]))} "
                                 f"does not match the model's {shape}")
        params = self.parameters()
        for k in expected:
            old = params[k].data if k in params else self.buffers()[k]
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

    # ------------------------------------------------------------------ calling
    def forward(self, x: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
