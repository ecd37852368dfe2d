"""Learning-rate schedules: small objects a training loop calls once per epoch (or, with
``per_step=True``, once per optimizer step).

``sched.step()`` advances one unit and writes the new rate into ``optimizer.lr``.
"""

from __future__ import annotations

import math
from typing import Any

from . import validate
from .module import StateDictError

__all__ = ["CosineLR", "ExponentialLR", "Schedule", "StepLR"]


class Schedule:
    """Base class: remembers the optimizer's initial rate and how often ``step`` was called
    (``epoch``; optimizer steps when ``per_step`` is True, which the Trainer honours)."""

    def __init__(self, optimizer: Any, per_step: bool = False):
        if not isinstance(getattr(optimizer, "lr", None), (int, float)):
            raise TypeError(f"{type(self).__name__}: optimizer must be an Optimizer (with a "
                            f"float lr), got {type(optimizer).__name__}")
        if not isinstance(per_step, bool):
            raise TypeError(f"{type(self).__name__}: per_step must be True or False, "
                            f"got {per_step!r}")
        self.optimizer = optimizer
        self.base_lr: float = optimizer.lr
        self.epoch = 0
        self.per_step = per_step

    def rate(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch; set and return the new learning rate."""
        self.epoch += 1
        self.optimizer.lr = self.rate(self.epoch)
        lr: float = self.optimizer.lr
        return lr

    def config(self) -> dict[str, Any]:
        """The settings that shape the curve; a saved state only fits a schedule with the
        same ones."""
        return {"schedule": type(self).__name__, "per_step": self.per_step}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "base_lr": self.base_lr, **self.config()}

    def check_state_dict(self, state: Any) -> None:
        """Raise :class:`~xpnet.module.StateDictError` unless ``state`` was saved by a schedule
        with these settings: resuming with, say, a longer cosine would silently give a run that
        no uninterrupted run matches. Changes nothing."""
        owner = type(self).__name__
        if not isinstance(state, dict):
            raise StateDictError(f"{owner}: a saved schedule state must be a dict (from "
                                 f"Schedule.state_dict()), got {type(state).__name__}")
        for key, value in self.config().items():
            if state.get(key) != value:
                raise StateDictError(f"{owner}: the saved schedule has {key}="
                                     f"{state.get(key)!r}, this one {key}={value!r}; resume "
                                     "with the settings the run started with (for the "
                                     "examples: the same --epochs, --batch-size and --warmup)")
        validate.non_negative_int(owner, "saved state's epoch", state.get("epoch"))
        validate.non_negative_float(owner, "saved state's base_lr", state.get("base_lr"))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position on the curve (after :meth:`check_state_dict`)."""
        self.check_state_dict(state)
        self.epoch, self.base_lr = int(state["epoch"]), float(state["base_lr"])
        self.optimizer.lr = self.rate(self.epoch)


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1):
        step_size = validate.positive_int("StepLR", "step_size", step_size)
        gamma = validate.positive_float("StepLR", "gamma", gamma)
        super().__init__(optimizer)
        self.step_size, self.gamma = step_size, gamma

    def config(self) -> dict[str, Any]:
        return {**super().config(), "step_size": self.step_size, "gamma": self.gamma}

    def rate(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """Multiply the rate by ``gamma`` every epoch."""

    def __init__(self, optimizer: Any, gamma: float):
        super().__init__(optimizer)
        self.gamma = validate.positive_float("ExponentialLR", "gamma", gamma)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "gamma": self.gamma}

    def rate(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** epoch


class CosineLR(Schedule):
    """Cosine annealing from the initial rate to ``min_lr`` over ``total`` units (Loshchilov &
    Hutter 2017, without restarts), after an optional linear warm-up of ``warmup`` units;
    constant ``min_lr`` afterwards. A unit is an epoch, or with ``per_step=True`` an optimizer
    step, which lets a single epoch anneal."""

    def __init__(self, optimizer: Any, total: int, min_lr: float = 0.0, *, warmup: int = 0,
                 per_step: bool = False):
        total = validate.positive_int("CosineLR", "total", total)
        min_lr = validate.non_negative_float("CosineLR", "min_lr", min_lr)
        warmup = validate.non_negative_int("CosineLR", "warmup", warmup)
        if warmup >= total:
            raise ValueError(f"CosineLR: warmup must be an integer in [0, total={total}), "
                             f"got {warmup!r}")
        super().__init__(optimizer, per_step)
        self.total, self.min_lr, self.warmup = total, min_lr, warmup
        optimizer.lr = self.rate(0)  # the warm-up starts below the base rate

    def config(self) -> dict[str, Any]:
        return {**super().config(), "total": self.total, "min_lr": self.min_lr,
                "warmup": self.warmup}

    def rate(self, epoch: int) -> float:
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / self.warmup
        done = min(1.0, (epoch - self.warmup) / (self.total - self.warmup))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * done))
