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

from ..checkpoint import Checkpoint, ResumeMismatchError
from ..module import Module
from ..rng import Generator
from ..schedules import Schedule
from ..validate import non_negative_float, non_negative_int

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

    def __init__(self, seed: int | None = 0):
        if seed is not None:
            seed = non_negative_int("Trainer", "seed", seed)
        self.epoch = 0
        self.step = 0
        self.rng = Generator(seed)
        self.history = History()

    def meta(self, model: Module, schedule: Schedule | None, backend_name: str,
             callbacks: Sequence[Any] = (), *, optimizer: Any = None,
             batch_size: int | None = None) -> dict[str, Any]:
        """The JSON part of a checkpoint (with the optimizer's class and settings and the batch
        size, which :meth:`validate` compares on resume)."""
        meta = {
            "epoch": self.epoch, "step": self.step, "rng": self.rng.get_state(),
            "layer_rngs": {k: g.get_state() for k, g in layer_generators(model).items()},
            "schedule": schedule.state_dict() if schedule is not None else None,
            "history": self.history.records, "history_steps": self.history.steps,
            "backend": backend_name, "callbacks": [c.state_dict() for c in callbacks],
        }
        if optimizer is not None:
            meta["optimizer_config"] = optimizer_config(optimizer, schedule)
        if batch_size is not None:
            meta["batch_size"] = batch_size
        return meta

    def validate(self, ck: Checkpoint, path: str | Path, *, model: Module, optimizer: Any,
                 schedule: Schedule | None, batch_size: int | None = None,
                 override: dict[str, Any] | None = None) -> None:
        """Raise :class:`~xpnet.checkpoint.ResumeMismatchError` (a ValueError naming ``path``
        and the differing setting) if the checkpoint does not fit this run; called before
        anything is changed. Checked: the model's parameter and buffer names, shapes and
        dtypes; the optimizer's class, settings and state; the schedule's class and settings;
        the batch size; the learning rate, unless ``override`` gives a new one (``{"lr": x}``,
        the only setting that may change on resume).
        """
        override = check_override(override)
        missing = [k for k in ("epoch", "step", "rng") if k not in ck.meta]
        if missing:
            raise ResumeMismatchError(
                f"{path}: not written by Trainer.save (no {', '.join(missing)} in its "
                "metadata), so there is no run to resume; expected a Trainer checkpoint (to "
                "load only the weights: model.load_state_dict(load_checkpoint(path).model))")
        _check_model(ck, path, model)
        _check_optimizer(ck, path, optimizer, schedule, override)
        saved_bs = ck.meta.get("batch_size")
        if batch_size is not None and saved_bs is not None and saved_bs != batch_size:
            raise ResumeMismatchError(
                f"{path}: the run was saved with batch_size={saved_bs}, this trainer has "
                f"batch_size={batch_size}; resume with the saved batch size (for the examples: "
                f"--batch-size {saved_bs})")
        _check_schedule(ck, path, schedule)

    def restore(self, ck: Checkpoint, *, model: Module, optimizer: Any,
                schedule: Schedule | None, backend: Any, callbacks: Sequence[Any] = (),
                override: dict[str, Any] | None = None) -> None:
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
        if override and "lr" in override:
            apply_lr(optimizer, schedule, override["lr"])


# ---------------------------------------------------------------------- resume checks
OVERRIDABLE = ("lr",)

# the state slots each built-in optimizer keeps per parameter (checkpoints written before the
# optimizer's class was saved are checked by these)
_SLOTS = {"SGD": set(), "Momentum": {"v"}, "Nesterov": {"v"}, "AdaGrad": {"h"},
          "RMSProp": {"v"}, "Adam": {"m", "v"}, "AdamW": {"m", "v"}}


def base_lr(optimizer: Any, schedule: Schedule | None) -> float:
    """The run's learning rate: the schedule's base rate, else the optimizer's rate."""
    return float(schedule.base_lr if schedule is not None else optimizer.lr)


def optimizer_config(optimizer: Any, schedule: Schedule | None) -> dict[str, Any]:
    """The optimizer's class and scalar settings (``lr``: the run's base rate), as JSON."""
    config: dict[str, Any] = {"class": type(optimizer).__name__}
    for k, v in sorted(vars(optimizer).items()):
        if k in ("t", "lr") or k.startswith("_"):
            continue
        if v is None or isinstance(v, (bool, int, float, str)):
            config[k] = v
    config["lr"] = base_lr(optimizer, schedule)
    return config


def check_override(override: dict[str, Any] | None) -> dict[str, Any]:
    """``override`` checked: a dict whose keys are among :data:`OVERRIDABLE`."""
    if override is None:
        return {}
    if not isinstance(override, dict):
        raise TypeError(f"resume: override must be a dict such as {{'lr': 0.01}}, "
                        f"got {override!r}")
    unknown = sorted(set(override) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"resume: override may change only {', '.join(OVERRIDABLE)}; got "
                         f"{unknown}: every other setting must match the saved run")
    out = dict(override)
    if "lr" in out:
        out["lr"] = non_negative_float("resume", "override['lr']", out["lr"])
    return out


def apply_lr(optimizer: Any, schedule: Schedule | None, lr: float) -> None:
    """Make ``lr`` the run's base rate from here on (the schedule's position is kept)."""
    if schedule is not None:
        schedule.base_lr = lr
        optimizer.lr = schedule.rate(schedule.epoch)
    else:
        optimizer.lr = lr


def _dtype_name(dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1]  # torch.float32 -> float32


def _check_model(ck: Checkpoint, path: str | Path, model: Module) -> None:
    expected = {k: (tuple(p.shape), _dtype_name(p.data.dtype))
                for k, p in model.parameters().items()}
    expected.update({k: (tuple(v.shape), _dtype_name(v.dtype))
                     for k, v in model.buffers().items()})
    missing = [k for k in expected if k not in ck.model]
    unexpected = [k for k in ck.model if k not in expected]
    if missing or unexpected:
        raise ResumeMismatchError(
            f"{path}: the saved model does not fit this one: missing {missing}, unexpected "
            f"{unexpected}; resume with the architecture the run started with")
    for k, (shape, dtype) in expected.items():
        saved = ck.model[k]
        if tuple(saved.shape) != shape:
            raise ResumeMismatchError(
                f"{path}: parameter {k!r} was saved with shape {tuple(saved.shape)}, this "
                f"model's is {shape}; resume with the architecture the run started with")
        if saved.dtype.name != dtype:
            raise ResumeMismatchError(
                f"{path}: parameter {k!r} was saved as {saved.dtype.name}, this model's is "
                f"{dtype}; resume with the dtype the run started with")


def _check_optimizer(ck: Checkpoint, path: str | Path, optimizer: Any,
                     schedule: Schedule | None, override: dict[str, Any]) -> None:
    ours = type(optimizer).__name__
    saved = ck.meta.get("optimizer_config")
    if saved is not None:
        if saved.get("class") != ours:
            raise ResumeMismatchError(
                f"{path}: the run was saved with the optimizer {saved.get('class')}, this "
                f"trainer has {ours}; its state (e.g. Adam's moments) means nothing to "
                f"another optimizer: resume with {saved.get('class')}")
        current = optimizer_config(optimizer, schedule)
        for key in sorted(set(saved) | set(current)):
            if key in ("class", "lr") or saved.get(key) == current.get(key):
                continue
            raise ResumeMismatchError(
                f"{path}: the optimizer was saved with {key}={saved.get(key)!r}, this one has "
                f"{key}={current.get(key)!r}; resume with the saved settings")
        if "lr" not in override and not math.isclose(saved["lr"], current["lr"],
                                                     rel_tol=1e-12, abs_tol=0.0):
            raise ResumeMismatchError(
                f"{path}: the run was saved with lr={saved['lr']!r}, this optimizer has "
                f"lr={current['lr']!r}; resume with the saved rate, or change it explicitly "
                "with Trainer.resume(path, override={'lr': ...}) (for the examples: --lr)")
    if ck.optimizer is None:
        return
    state = ck.optimizer["state"]
    unknown = [n for n in state if n not in optimizer.params]
    if unknown:
        raise ResumeMismatchError(f"{path}: the saved optimizer state names parameters "
                                  f"{unknown} that this optimizer does not have")
    slots = {k for s in state.values() for k in s}
    expected_slots = _SLOTS.get(ours)
    if saved is None and expected_slots is not None and slots - expected_slots:
        raise ResumeMismatchError(
            f"{path}: the saved optimizer state has slots {sorted(slots)}, which {ours} does "
            f"not keep ({sorted(expected_slots) or 'none'}); resume with the optimizer the run "
            "started with")
    for n, s in state.items():
        shape = tuple(optimizer.params[n].shape)
        for k, v in s.items():
            if tuple(v.shape) != shape:
                raise ResumeMismatchError(
                    f"{path}: optimizer state {n}/{k} was saved with shape {tuple(v.shape)}, "
                    f"the parameter has {shape}")


def _check_schedule(ck: Checkpoint, path: str | Path, schedule: Schedule | None) -> None:
    saved = ck.meta.get("schedule")
    if (schedule is None) != (saved is None):
        ours = "none" if schedule is None else type(schedule).__name__
        raise ResumeMismatchError(
            f"{path}: saved {'with' if saved else 'without'} a learning-rate schedule, but "
            f"this trainer's schedule is {ours}; resume with the schedule the run started "
            "with (for the examples: the same --schedule)")
    if saved is None:
        return
    saved = {"per_step": False, **saved}  # states saved before per_step existed
    for key, value in schedule.config().items():
        if key in saved and saved[key] != value:
            raise ResumeMismatchError(
                f"{path}: {type(schedule).__name__}: the saved schedule has {key}="
                f"{saved[key]!r}, this one {key}={value!r}; resume with the settings the run "
                "started with (for the examples: the same --epochs, --batch-size and --warmup)")
