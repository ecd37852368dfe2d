"""Optimizers, in order of increasing complexity. Each updates parameters in place on the device
and keeps per-parameter state keyed by the parameter's stable name (so it can be checkpointed).

Update rules follow PyTorch's ``torch.optim`` definitions, so results are comparable.
Weight decay: ``weight_decay`` adds ``wd * p`` (L2) and ``l1`` adds ``l1 * sign(p)`` to the
gradient; by default only parameters with two or more dimensions (weights, not biases or
BatchNorm scales) are decayed, as in the textbook. AdamW decays decoupled from the gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from array_api_compat import array_namespace, device

from . import ops, validate
from .backend import same_device, to_device, to_numpy
from .module import Module, Parameter, StateDictError, _dtype_name

__all__ = ["SGD", "AdaGrad", "Adam", "AdamW", "Momentum", "Nesterov", "Optimizer", "RMSProp",
           "clip_grad_norm"]

Array = Any
Params = Union[dict[str, Parameter], Module]  # a model, or its parameters by name


def _is_weight(name: str, p: Parameter) -> bool:
    return len(p.shape) >= 2


def clip_grad_norm(params: dict[str, Parameter], max_norm: float) -> Array:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping as a 0-d device array (no host sync).
    """
    max_norm = validate.positive_float("clip_grad_norm", "max_norm", max_norm)
    grads = [p.grad for p in params.values() if p.grad is not None]
    if not grads:
        raise ValueError("clip_grad_norm: no parameter has a gradient; call backward first")
    xp = array_namespace(grads[0])
    total = xp.sqrt(sum(xp.sum(g * g) for g in grads))
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for p in params.values():
        if p.grad is not None:
            p.replace_grad(p.grad * scale)
    return total


GradHook = Callable[[dict[str, Parameter]], None]


@dataclass
class ParamGroup:
    """Parameters (by name) that share hyper-parameters. ``lr_scale`` multiplies the
    optimizer's ``lr`` (so a schedule scales every group); ``weight_decay`` and ``l1`` are
    absolute, None meaning the optimizer's own."""

    names: list[str]
    lr_scale: float = 1.0
    weight_decay: float | None = None
    l1: float | None = None


@dataclass
class _Hyper:
    lr: float
    weight_decay: float
    l1: float


def _group_params(owner: str, i: int, spec: Any) -> list[Parameter]:
    """The Parameter objects a group's ``"params"`` names (a Module, a Parameter, a list of
    them or a name -> Parameter dict)."""
    if isinstance(spec, Module):
        return list(spec.parameters().values())
    if isinstance(spec, Parameter):
        return [spec]
    if isinstance(spec, dict):
        spec = list(spec.values())
    if isinstance(spec, (list, tuple)):
        out: list[Parameter] = []
        for item in spec:
            out.extend(_group_params(owner, i, item))
        return out
    raise TypeError(f"{owner}: groups[{i}]['params'] must be a Module, a Parameter or a list "
                    f"of them, got {type(spec).__name__}")


class Optimizer:
    """Base class: validation, gradient hooks, weight decay, clipping and the state dict.

    ``step()`` runs, in order: the gradient hooks (:meth:`register_grad_hook`: averaging over
    micro-batches or processes), clipping, then per parameter weight decay and the update rule.
    Subclasses implement ``_update(name, p, g, xp, h)``, writing into ``p.data`` in place with
    the hyper-parameters ``h`` (``h.lr``, ``h.weight_decay``, ``h.l1``) of the parameter's
    group.

    Parameter groups: ``groups=[{"params": model[0], "lr": 1e-4, "weight_decay": 0.0}, ...]``
    gives those parameters their own rate and decay; every other parameter keeps the
    optimizer's. A group's ``lr`` is stored relative to ``lr`` (``lr_scale``), so a schedule,
    which sets ``optimizer.lr``, scales every group alike. State stays keyed by the stable
    parameter names, so checkpoints are unchanged.

    Frozen parameters (``param.trainable = False``, :meth:`Module.freeze`) are skipped: no
    update, no state, no decay, and they need no gradient. Optimizer state follows the
    parameters when the model moves (``model.to_device``, ``model.to_dtype``): a slot on
    another device or dtype is moved at the next step.
    """

    def __init__(self, params: Params, lr: float, *, weight_decay: float = 0.0,
                 l1: float = 0.0, clip_norm: float | None = None,
                 decay_filter: Callable[[str, Parameter], bool] = _is_weight,
                 groups: list[dict[str, Any]] | None = None):
        self.params: dict[str, Parameter] = dict(
            params.parameters() if isinstance(params, Module) else params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimise")
        owner = type(self).__name__
        lr = validate.non_negative_float(owner, "lr", lr)
        weight_decay = validate.non_negative_float(owner, "weight_decay", weight_decay)
        l1 = validate.non_negative_float(owner, "l1", l1)
        if clip_norm is not None:
            clip_norm = validate.positive_float(owner, "clip_norm", clip_norm)
        validate.function(owner, "decay_filter", decay_filter, "a callable (name, param) -> bool")
        self.lr, self.weight_decay, self.l1, self.clip_norm = lr, weight_decay, l1, clip_norm
        self.decay_filter = decay_filter
        self.t = 0
        self.state: dict[str, dict[str, Array]] = {}
        self._grad_hooks: list[GradHook] = []
        self.param_groups = self._make_groups(groups or [])
        self._check_dtypes()

    def _make_groups(self, specs: list[dict[str, Any]]) -> list[ParamGroup]:
        """Validate ``groups=`` and build the groups, the remaining parameters last."""
        owner = type(self).__name__
        validate.instance(owner, "groups", specs, (list, tuple), "a list of dicts")
        name_of = {id(p): n for n, p in self.params.items()}
        taken: dict[str, int] = {}
        out = []
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict) or "params" not in spec:
                raise TypeError(f"{owner}: groups[{i}] must be a dict with a 'params' entry, "
                                f"got {spec!r}")
            unknown = set(spec) - {"params", "lr", "weight_decay", "l1"}
            if unknown:
                raise ValueError(f"{owner}: groups[{i}] has unknown keys {sorted(unknown)}; "
                                 "expected 'params', 'lr', 'weight_decay', 'l1'")
            for key in ("lr", "weight_decay", "l1"):
                validate.non_negative_float(owner, f"groups[{i}]['{key}']", spec.get(key, 0.0))
            names = []
            for p in _group_params(owner, i, spec["params"]):
                if id(p) not in name_of:
                    raise ValueError(f"{owner}: groups[{i}] holds {p!r}, which is not among "
                                     "the parameters given to the optimizer")
                n = name_of[id(p)]
                if n in taken:
                    raise ValueError(f"{owner}: parameter {n!r} is in groups[{taken[n]}] and "
                                     f"groups[{i}]; a parameter belongs to one group")
                taken[n] = i
                names.append(n)
            if not names:
                raise ValueError(f"{owner}: groups[{i}] has no parameters")
            scale = 1.0
            if "lr" in spec:
                if self.lr == 0:
                    raise ValueError(f"{owner}: groups[{i}] sets lr but the optimizer's lr is "
                                     "0; group rates are kept relative to it")
                scale = float(spec["lr"]) / self.lr
            out.append(ParamGroup(names, scale, spec.get("weight_decay"), spec.get("l1")))
        self._explicit_groups = len(out)
        rest = [n for n in self.params if n not in taken]
        if rest:
            out.append(ParamGroup(rest))
        return out

    def _hyper(self, group: ParamGroup) -> _Hyper:
        wd = self.weight_decay if group.weight_decay is None else group.weight_decay
        l1 = self.l1 if group.l1 is None else group.l1
        return _Hyper(self.lr * group.lr_scale, wd, l1)

    def group_lrs(self) -> list[float]:
        """The current learning rate of each parameter group (the last one: the rest)."""
        return [self.lr * g.lr_scale for g in self.param_groups]

    def register_grad_hook(self, hook: GradHook) -> Callable[[], None]:
        """Run ``hook(params)`` at the start of every ``step``, before clipping and decay.

        A hook rewrites finished gradients with ``param.replace_grad(...)``: averaging over
        accumulated micro-batches or over processes. Hooks run in registration order and are
        not saved in checkpoints. Returns a function that removes the hook.
        """
        validate.function(f"{type(self).__name__}.register_grad_hook", "hook", hook,
                          "a callable taking the parameter dict")
        self._grad_hooks.append(hook)

        def remove() -> None:
            if hook in self._grad_hooks:
                self._grad_hooks.remove(hook)

        return remove

    def _slot(self, name: str, key: str, like: Array) -> Array:
        slots = self.state.setdefault(name, {})
        s = slots.get(key)
        if s is None:
            s = slots[key] = array_namespace(like).zeros_like(like)
        elif s.dtype != like.dtype or not same_device(s, like):
            # the model moved (to_device / to_dtype): the state follows its parameter
            s = slots[key] = array_namespace(like).asarray(
                np.asarray(to_numpy(s)), dtype=like.dtype, device=device(like))
        return s

    def _grad(self, name: str, p: Parameter, xp: Any, h: _Hyper) -> Array:
        g = p.grad
        if self.decay_filter(name, p):
            if h.weight_decay:
                g = g + h.weight_decay * p.data
            if h.l1:
                g = g + h.l1 * xp.sign(p.data)
        return g

    #: divides by ``sqrt(state) + eps``: wrong in half precision (see :meth:`_check_dtypes`)
    eps_based = False

    def _check_dtypes(self) -> None:
        """Refuse half-precision parameters for an ``eps``-based rule: eps (1e-8) rounds to 0
        in float16 and squared gradients underflow, so the update divides by zero."""
        if not self.eps_based:
            return
        low = [n for n, p in self.params.items()
               if _dtype_name(p.data.dtype) in ("float16", "bfloat16")]
        if low:
            dtype = _dtype_name(self.params[low[0]].data.dtype)
            raise TypeError(
                f"{type(self).__name__}: parameters {low} are {dtype}, in which its eps and "
                "squared gradients round to 0, so the update would divide by zero; expected "
                "float32 parameters (master weights): keep the model float32 and train in half "
                "precision with Trainer(..., precision='mixed16') or xpnet.autocast('mixed16')")

    def trainable(self) -> dict[str, Parameter]:
        """The parameters this optimizer updates now (frozen ones left out)."""
        return {n: p for n, p in self.params.items() if p.trainable}

    def step(self) -> None:
        """Apply one update to every trainable parameter from its ``grad``."""
        active = self.trainable()
        self._check_dtypes()  # the model may have been cast since construction
        missing = [n for n, p in active.items() if p.grad is None]
        if missing:
            raise RuntimeError(f"{type(self).__name__}.step: parameters {missing} have no "
                               "gradient; call backward() before step()")
        for hook in self._grad_hooks:
            hook(active)
        if self.clip_norm is not None and active:
            clip_grad_norm(active, self.clip_norm)
        self.t += 1
        for group in self.param_groups:
            h = self._hyper(group)
            for name in group.names:
                p = self.params[name]
                if not p.trainable:
                    continue
                xp = array_namespace(p.data)
                self._update(name, p, self._grad(name, p, xp, h), xp, h)

    def _update(self, name: str, p: Parameter, g: Array, xp: Any,
                h: _Hyper) -> None:  # pragma: no cover
        raise NotImplementedError

    def _groups_state(self) -> list[dict[str, Any]]:
        """The explicit parameter groups as saved in :meth:`state_dict` (JSON-ready)."""
        return [{"params": g.names, "lr_scale": g.lr_scale, "weight_decay": g.weight_decay,
                 "l1": g.l1} for g in self.param_groups[:self._explicit_groups]]

    def settings(self) -> dict[str, Any]:
        """The scalar hyper-parameters besides ``lr`` (``momentum``, ``betas``, ``eps``,
        ``weight_decay``...), as JSON values: a saved state fits only the same ones."""
        return {k: v for k, v in sorted(vars(self).items())
                if k not in ("t", "lr") and not k.startswith("_")
                and (v is None or isinstance(v, (bool, int, float, str)))}

    def state_dict(self) -> dict[str, Any]:
        """Class, settings, step count, learning rate, groups and per-parameter state (host
        NumPy arrays)."""
        return {"class": type(self).__name__, "settings": self.settings(), "t": self.t,
                "lr": self.lr, "groups": self._groups_state(),
                "state": {n: {k: np.array(to_numpy(v)) for k, v in s.items()} for n, s in
                          self.state.items()}}

    def check_state_dict(self, state: Any) -> None:
        """Raise :class:`StateDictError` unless ``state`` (from :meth:`state_dict`) fits this
        optimizer: same class and settings, same parameter groups, slots only for its
        parameters and of their shapes. Changes nothing."""
        ours = type(self).__name__
        keys = {"class", "settings", "t", "lr", "groups", "state"}
        if not isinstance(state, dict) or not keys <= set(state):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateDictError(f"{ours}: a saved optimizer state must be a dict with keys "
                                 f"{sorted(keys)} (from Optimizer.state_dict()), got {got}")
        if state["class"] != ours:
            raise StateDictError(
                f"{ours}: the state was saved by the optimizer {state['class']}, this one is "
                f"{ours}; its slots (e.g. Adam's moments) mean nothing to another optimizer: "
                f"resume with {state['class']}")
        saved, current = state["settings"], self.settings()
        if not isinstance(saved, dict):
            raise StateDictError(f"{ours}: saved settings must be a dict, got {saved!r}")
        for key in sorted(set(saved) | set(current)):
            if saved.get(key) != current.get(key):
                raise StateDictError(
                    f"{ours}: the optimizer was saved with {key}={saved.get(key)!r}, this one "
                    f"has {key}={current.get(key)!r}; resume with the saved settings")
        validate.non_negative_int(ours, "saved state's t", state["t"])
        validate.non_negative_float(ours, "saved state's lr", state["lr"])
        if not isinstance(state["groups"], list) or not isinstance(state["state"], dict):
            raise StateDictError(f"{ours}: a saved state's groups must be a list and its state "
                                 f"a dict, got {type(state['groups']).__name__} and "
                                 f"{type(state['state']).__name__}")
        groups = [g.get("params") if isinstance(g, dict) else g for g in state["groups"]]
        own = [g["params"] for g in self._groups_state()]
        if groups != own:
            raise StateDictError(f"{ours}: the saved state has parameter groups {groups}, "
                                 f"this optimizer {own}; build it with the groups the run "
                                 "started with")
        slots = state["state"]
        unknown = [n for n in slots if n not in self.params]
        if unknown:
            raise StateDictError(f"{ours}: the saved state names parameters {unknown} that "
                                 "this optimizer does not have")
        for n, s in slots.items():
            shape = tuple(self.params[n].shape)
            if not isinstance(s, dict):
                raise StateDictError(f"{ours}: the saved state of {n!r} must be a dict of "
                                     f"slots, got {type(s).__name__}")
            for k, v in s.items():
                if tuple(np.shape(v)) != shape:
                    raise StateDictError(f"{ours}: state {n}/{k} was saved with shape "
                                         f"{tuple(np.shape(v))}, the parameter has {shape}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (saved on any backend) onto the parameters' device;
        :meth:`check_state_dict` runs first, so a misfit changes nothing."""
        self.check_state_dict(state)
        new = {n: {k: to_device(np.array(v), dtype=self.params[n].data.dtype)
                   for k, v in slots.items()} for n, slots in state["state"].items()}
        self.t, self.lr, self.state = int(state["t"]), float(state["lr"]), new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr})"


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def __init__(self, params: Params, lr: float = 0.01, **kw: Any):
        super().__init__(params, lr, **kw)

    def _update(self, name: str, p: Parameter, g: Array, xp: Any, h: _Hyper) -> None:
        p.data -= h.lr * g


class Momentum(Optimizer):
    """SGD with momentum (Polyak 1964; PyTorch form): ``v = mu*v + g; p -= lr*v``."""

    nesterov = False

    def __init__(self, params: Params, lr: float = 0.01, momentum: float = 0.9, **kw: Any):
        super().__init__(params, lr, **kw)
        self.momentum = validate.probability(type(self).__name__, "momentum", momentum)

    def _update(self, name: str, p: Parameter, g: Array, xp: Any, h: _Hyper) -> None:
        v = self._slot(name, "v", p.data)
        v *= self.momentum
        v += g
        p.data -= h.lr * (g + self.momentum * v if self.nesterov else v)


class Nesterov(Momentum):
    """Nesterov accelerated gradient (Sutskever et al. 2013; PyTorch form):
    ``v = mu*v + g; p -= lr*(g + mu*v)``."""

    nesterov = True


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al. 2011): ``h += g**2; p -= lr * g / (sqrt(h) + eps)``."""

    eps_based = True

    def __init__(self, params: Params, lr: float = 0.01, eps: float = 1e-10, **kw: Any):
        super().__init__(params, lr, **kw)
        self.eps = validate.positive_float("AdaGrad", "eps", eps)

    def _update(self, name: str, p: Parameter, g: Array, xp: Any, hyper: _Hyper) -> None:
        h = self._slot(name, "h", p.data)
        h += g * g
        p.data -= hyper.lr * g / (xp.sqrt(h) + self.eps)


class RMSProp(Optimizer):
    """RMSProp (Tieleman & Hinton 2012): ``v = a*v + (1-a)*g**2; p -= lr*g/(sqrt(v)+eps)``."""

    eps_based = True

    def __init__(self, params: Params, lr: float = 0.01, alpha: float = 0.99,
                 eps: float = 1e-8, **kw: Any):
        super().__init__(params, lr, **kw)
        self.alpha = validate.probability("RMSProp", "alpha", alpha)
        self.eps = validate.positive_float("RMSProp", "eps", eps)

    def _update(self, name: str, p: Parameter, g: Array, xp: Any, h: _Hyper) -> None:
        v = self._slot(name, "v", p.data)
        v *= self.alpha
        v += (1.0 - self.alpha) * (g * g)
        p.data -= h.lr * g / (xp.sqrt(v) + self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction:
    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g**2;
    p -= lr * (m / (1-b1**t)) / (sqrt(v / (1-b2**t)) + eps)``."""

    eps_based = True

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, **kw: Any):
        super().__init__(params, lr, **kw)
        owner = type(self).__name__
        betas = validate.pair(owner, "betas", betas, "a pair (beta1, beta2)")
        b1 = validate.probability(owner, "betas[0]", betas[0])
        b2 = validate.probability(owner, "betas[1]", betas[1])
        self.beta1, self.beta2 = b1, b2
        self.eps = validate.positive_float(owner, "eps", eps)

    def _update(self, name: str, p: Parameter, g: Array, xp: Any, h: _Hyper) -> None:
        m = self._slot(name, "m", p.data)
        v = self._slot(name, "v", p.data)
        ops.adam_update(p.data, g, m, v, lr=h.lr, beta1=self.beta1, beta2=self.beta2,
                        eps=self.eps, step=self.t)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019):
    ``p -= lr * wd * p`` before the Adam step; ``weight_decay`` defaults to 0.01."""

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, **kw: Any):
        super().__init__(params, lr, betas, eps, weight_decay=weight_decay, **kw)

    def _grad(self, name: str, p: Parameter, xp: Any, h: _Hyper) -> Array:
        g = p.grad
        if h.l1 and self.decay_filter(name, p):
            g = g + h.l1 * xp.sign(p.data)
        return g

    def _update(self, name: str, p: Parameter, g: Array, xp: Any, h: _Hyper) -> None:
        if h.weight_decay and self.decay_filter(name, p):
            p.data *= 1.0 - h.lr * h.weight_decay
        super()._update(name, p, g, xp, h)
