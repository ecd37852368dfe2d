"""Run state: what a checkpoint holds besides the model, the optimizer and the callbacks.

:class:`RunState` owns the counters (epoch, step), the batch-order Generator, the history and
the layers' Generators (dropout masks). Like every other object a run saves, it has
``state_dict``, ``check_state_dict`` (refuses, changing nothing) and ``load_state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..module import Module, StateDictError
from ..rng import Generator
from ..validate import non_negative_int

__all__ = ["History", "RunState"]


@dataclass
class History:
    """Per-epoch records (``epoch``, ``loss``, ``train_acc``, ``test_loss``, ``test_acc``,
    ``lr`` (the mean learning rate of the epoch's steps), ``seconds``) and per-step records
    (``steps``: ``step``, ``epoch``, ``loss``, ``lr``).

    ``history["loss"]`` lists one key over the epochs (NaN where a record lacks it).
    """

    records: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [r.get(key, math.nan) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "steps": self.steps}

    def check_state_dict(self, state: Any) -> None:
        """StateDictError unless ``state`` holds lists of records (dicts)."""
        if not isinstance(state, dict):
            raise StateDictError(f"History: a saved history must be a dict, got "
                                 f"{type(state).__name__}")
        for key in ("records", "steps"):
            value = state.get(key)
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise StateDictError(f"History: saved {key} must be a list of records "
                                     f"(dicts), got {type(value).__name__}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self.records = [dict(r) for r in state["records"]]
        self.steps = [dict(r) for r in state["steps"]]


def layer_generators(model: Module) -> dict[str, Generator]:
    """Every Generator held by a layer (Dropout masks), keyed by the layer's path ('.' for the
    model itself, '3.' for its layer 3)."""
    return {f"{path}." if path else ".": m.rng for path, m in model.modules().items()
            if isinstance(getattr(m, "rng", None), Generator)}


def _check_generator_state(name: str, state: Any) -> None:
    try:
        Generator(0).set_state(state)  # a throwaway Generator: ours are not touched
    except (TypeError, ValueError, KeyError) as exc:
        raise StateDictError(f"RunState: saved {name} is not a Generator state ({exc})") \
            from None


class RunState:
    """Counters, Generators and history of one training run (see the module docstring)."""

    KEYS = ("epoch", "step", "rng", "layer_rngs", "history")

    def __init__(self, seed: int | None = 0):
        if seed is not None:
            seed = non_negative_int("Trainer", "seed", seed)
        self.epoch = 0
        self.step = 0
        self.rng = Generator(seed)
        self.history = History()

    def state_dict(self, model: Module) -> dict[str, Any]:
        """Counters, the batch-order and layer Generators' states and the history (JSON)."""
        return {"epoch": self.epoch, "step": self.step, "rng": self.rng.get_state(),
                "layer_rngs": {k: g.get_state() for k, g in layer_generators(model).items()},
                "history": self.history.state_dict()}

    def check_state_dict(self, state: Any, model: Module) -> None:
        """StateDictError unless ``state`` (from :meth:`state_dict`) is well-formed and its
        layer Generators are this ``model``'s; changes nothing."""
        if not isinstance(state, dict) or any(k not in state for k in self.KEYS):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateDictError(f"RunState: a saved run state must hold {list(self.KEYS)}, "
                                 f"got {got}")
        non_negative_int("RunState", "saved epoch", state["epoch"])
        non_negative_int("RunState", "saved step", state["step"])
        _check_generator_state("rng", state["rng"])
        gens, saved = layer_generators(model), state["layer_rngs"]
        if not isinstance(saved, dict) or sorted(saved) != sorted(gens):
            got = sorted(saved) if isinstance(saved, dict) else saved
            raise StateDictError(f"RunState: saved layer Generators {got}, this model has "
                                 f"{sorted(gens)}")
        for k, g in saved.items():
            _check_generator_state(f"layer_rngs[{k!r}]", g)
        self.history.check_state_dict(state["history"])

    def load_state_dict(self, state: dict[str, Any], model: Module) -> None:
        self.check_state_dict(state, model)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.rng.set_state(state["rng"])
        for k, g in layer_generators(model).items():
            g.set_state(state["layer_rngs"][k])
        history = History()
        history.load_state_dict(state["history"])
        self.history = history  # a new object: a History returned by an earlier fit stays
