"""Learning-rate schedules: small objects a training loop calls once per epoch.

``sched.step()`` advances one epoch and writes the new rate into ``optimizer.lr``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CosineLR", "ExponentialLR", "Schedule", "StepLR"]


class Schedule:
    """Base class: remembers the optimizer's initial rate and the epoch count."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def rate(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch; set and return the new learning rate."""
        self.epoch += 1
        self.optimizer.lr = self.rate(self.epoch)
        return self.optimizer.lr

    def state_dict(self) -> dict[str, float]:
        return {"epoch": self.epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.epoch, self.base_lr = int(state["epoch"]), float(state["base_lr"])
        self.optimizer.lr = self.rate(self.epoch)


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        if step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size}")
        self.step_size, self.gamma = step_size, gamma

    def rate(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """Multiply the rate by ``gamma`` every epoch."""

    def __init__(self, optimizer: Any, gamma: float):
        super().__init__(optimizer)
        if not gamma > 0:
            raise ValueError(f"ExponentialLR: gamma must be positive, got {gamma}")
        self.gamma = gamma

    def rate(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** epoch


class CosineLR(Schedule):
    """Cosine annealing from the initial rate to ``min_lr`` over ``total_epochs``
    (Loshchilov & Hutter 2017, without restarts); constant ``min_lr`` afterwards."""

    def __init__(self, optimizer: Any, total_epochs: int, min_lr: float = 0.0):
        super().__init__(optimizer)
        if total_epochs <= 0:
            raise ValueError(f"CosineLR: total_epochs must be positive, got {total_epochs}")
        self.total_epochs, self.min_lr = total_epochs, min_lr

    def rate(self, epoch: int) -> float:
        e = min(epoch, self.total_epochs)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
            1.0 + math.cos(math.pi * e / self.total_epochs))
