"""Run state: what a checkpoint holds besides the model and optimizer, and its checks on resume.

:class:`RunState` owns the counters (epoch, step), the batch-order Generator, the history and
the layers' Generators (dropout masks). :meth:`RunState.meta` is what ``save`` writes;
:meth:`RunState.validate` checks a loaded checkpoint against this run before anything is
changed; :meth:`RunState.restore` then loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..module import Module
from ..rng import Generator
from ..schedules import Schedule

__all__ = ["History", "RunState"]


@dataclass
class History:
    """Per-epoch records (``epoch``, ``loss``, ``train_acc``, ``test_loss``, ``test_acc``,
    ``lr`` (the mean learning rate of the epoch's steps), ``seconds``) and per-step records
    (``steps``: ``step``, ``epoch``, ``loss``, ``lr``).

    ``history["loss"]`` lists one key over the epochs (NaN where a record lacks it). The
    records keep the short names ``train_acc``/``test_acc`` (plots and checkpoints read them);
    ``history["train_accuracy"]`` and ``history["test_accuracy"]``, the names of the examples'
    JSON summaries, read the same lists.
    """

    ALIASES = {"train_accuracy": "train_acc", "test_accuracy": "test_acc"}

    records: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        key = self.ALIASES.get(key, key)
        return [r.get(key, math.nan) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}


def layer_generators(model: Module) -> dict[str, Generator]:
    """Every Generator held by a layer (Dropout masks), keyed by the layer's path."""
    # keys as checkpoints have always written them: '.' for the model, '3.' for its layer 3
    return {f"{path}." if path else ".": m.rng for path, m in model.modules().items()
            if isinstance(getattr(m, "rng", None), Generator)}


class RunState:
    """Counters, Generators and history of one training run (see the module docstring)."""

    def __init__(self, seed: int = 0):
        self.epoch = 0
        self.step = 0
        self.rng = Generator(seed)
        self.history = History()

    def meta(self, model: Module, schedule: Schedule | None, backend_name: str,
             callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """The JSON part of a checkpoint."""
        return {
            "epoch": self.epoch, "step": self.step, "rng": self.rng.get_state(),
            "layer_rngs": {k: g.get_state() for k, g in layer_generators(model).items()},
            "schedule": schedule.state_dict() if schedule is not None else None,
            "history": self.history.records, "history_steps": self.history.steps,
            "backend": backend_name, "callbacks": [c.state_dict() for c in callbacks],
        }

    def validate(self, ck: Checkpoint, path: str | Path, *, model: Module, optimizer: Any,
                 schedule: Schedule | None) -> None:
        """Raise (ValueError naming ``path``) if the checkpoint does not fit this run; called
        before anything is overwritten. Checks today: schedule present in both or neither.
        The model's parameter names and shapes are checked by ``load_state_dict``.
        """
        saved = ck.meta.get("schedule")
        if (schedule is None) != (saved is None):
            ours = "none" if schedule is None else type(schedule).__name__
            raise ValueError(f"{path}: saved {'with' if saved else 'without'} a learning-rate "
                             f"schedule, but this trainer's schedule is {ours}; resume with "
                             "the schedule the run started with (for the examples: the same "
                             "--schedule)")

    def restore(self, ck: Checkpoint, *, model: Module, optimizer: Any,
                schedule: Schedule | None, backend: Any, callbacks: Sequence[Any] = ()
                ) -> None:
        """Load a validated checkpoint into the model, optimizer, schedule and this state."""
        meta = ck.meta
        if meta.get("schedule") is not None:
            schedule.load_state_dict(meta["schedule"])  # refuses other settings first
        model.load_state_dict(ck.model, backend=backend)
        # the optimizer holds the same Parameter objects, whose data was just replaced
        if ck.optimizer is not None:
            optimizer.load_state_dict(ck.optimizer)
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.rng.set_state(meta["rng"])
        gens = layer_generators(model)
        for k, state in meta.get("layer_rngs", {}).items():
            if k in gens:
                gens[k].set_state(state)
        saved = meta.get("callbacks", [])
        if len(saved) == len(callbacks):  # early stopping's patience, keep-best's best value
            for c, state in zip(callbacks, saved):
                c.load_state_dict(state)
        self.history = History(list(meta.get("history", [])),
                               list(meta.get("history_steps", [])))
