"""Run state and resume: what a checkpoint holds besides the model, optimizer and callbacks.

:class:`RunState` owns the counters (epoch, step), the batch-order Generator, the history and
the layers' Generators (dropout masks). Like every other object a run saves, it has
``state_dict``, ``check_state_dict`` (refuses, changing nothing) and ``load_state_dict``.
A resume is two steps: :func:`check_resume` hands each part of the file to its owner's
``check_state_dict``, and only when all pass does :func:`apply_resume` load them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validate
from ..io.checkpoint import Checkpoint, ResumeMismatchError
from ..module import Module, StateDictError, check_finite_state
from ..rng import Generator

__all__ = ["History", "RunState", "apply_resume", "check_override", "check_resume"]


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

    def __repr__(self) -> str:
        """A short summary whatever the run's length: counts, then the last and best values
        (``records`` and ``steps`` hold everything, for programs)."""
        if not self.records:
            return f"History(0 epochs, {len(self.steps)} steps)"
        last = self.last
        parts = [f"{k} {_num(last[k])}" for k in _columns(self.records)
                 if k not in ("epoch", "seconds")]
        seconds = sum(r.get("seconds", 0.0) for r in self.records)
        head = (f"History({len(self.records)} epoch{'s' * (len(self.records) != 1)}, "
                f"{len(self.steps)} steps, {seconds:.1f}s; last: {', '.join(parts)}")
        best = []
        for key, pick in (("loss", min), ("test_loss", min), ("test_acc", max)):
            values = [(r[key], r["epoch"]) for r in self.records if key in r]
            if values:
                value, epoch = pick(values, key=lambda v: v[0])
                best.append(f"{key} {_num(value)} (epoch {epoch})")
        return head + (f"; best: {', '.join(best)})" if best else ")")

    def table(self) -> str:
        """One row per epoch, one column per recorded value (``epoch``, ``loss``,
        ``train_acc``, ``lr``, ``seconds``, ``test_loss``, ``test_acc``, ...), numbers as people
        read them (4 significant digits), the columns right-aligned under their names."""
        cols = _columns(self.records)
        rows = [[_num(r.get(k, math.nan), k) for k in cols] for r in self.records]
        widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths))
                         for row in [cols, *rows])

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


def _columns(records: list[dict[str, float]]) -> list[str]:
    """Every key of the records, in the order they first appear."""
    return list(dict.fromkeys(k for r in records for k in r))


def _num(v: Any, key: str = "") -> str:
    """A number as people read it: integers whole, seconds to one decimal, other floats to 4
    significant digits (``0.0010000000000000007`` -> ``0.001``)."""
    if isinstance(v, (int, bool)):
        return str(int(v))
    return f"{v:.1f}" if key == "seconds" else f"{v:.4g}"


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
            seed = validate.non_negative_int("Trainer", "seed", seed)
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
        validate.non_negative_int("RunState", "saved epoch", state["epoch"])
        validate.non_negative_int("RunState", "saved step", state["step"])
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


# ---------------------------------------------------------------------- resume
OVERRIDABLE = ("lr",)


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
        out["lr"] = validate.non_negative_float("resume", "override['lr']", out["lr"])
    return out


def check_resume(trainer: Any, ck: Checkpoint, path: str | Path,
                 override: dict[str, Any], *, allow_nonfinite: bool = False) -> None:
    """Every check of ``Trainer.resume``, before anything changes: each part of the file goes
    to its owner's ``check_state_dict``; a misfit is a :class:`ResumeMismatchError` naming
    ``path``. Every setting that changes the result must match (``accumulate``, the
    training-set size is checked by the next ``fit``); NaN or inf in the weights or optimizer
    slots is refused unless ``allow_nonfinite``."""
    meta = ck.meta
    missing = [k for k in ("epoch", "step", "rng") if k not in meta]
    if missing:
        raise ResumeMismatchError(
            f"{path}: not written by Trainer.save (no {', '.join(missing)} in its "
            "metadata), so there is no run to resume; expected a Trainer checkpoint (to "
            "load only the weights: model.load_state_dict(load_checkpoint(path).model))")

    def fits(check: Any, *args: Any, fix: str = "", **kw: Any) -> Any:
        try:
            return check(*args, **kw)
        except ValueError as exc:  # StateDictError and the validators' errors
            raise ResumeMismatchError(f"{path}: {exc}{fix}") from None

    fits(trainer.model.check_state_dict, ck.model, dtypes=True, allow_nonfinite=True,
         fix="; resume with the architecture and dtype the run started with")
    if ck.optimizer is None:
        raise ResumeMismatchError(f"{path}: holds no optimizer state; expected a Trainer "
                                  "checkpoint")
    fits(trainer.optimizer.check_state_dict, ck.optimizer)
    if not allow_nonfinite:
        slots = ck.optimizer.get("state", {})
        arrays = {**ck.model, **{f"optimizer slot {n}.{k}": v for n, s in slots.items()
                                 for k, v in s.items()}}
        fits(check_finite_state, arrays, type(trainer.model).__name__,
             fix=" (a diverged run's state; to inspect it anyway: "
                 "resume(path, allow_nonfinite=True))")
    size = meta.get("train_size")
    if size is not None:
        fits(validate.non_negative_int, "checkpoint", "train_size", size)
    saved_lr = fits(validate.non_negative_float, "checkpoint", "base_lr", meta.get("base_lr"))
    if "lr" not in override and not math.isclose(saved_lr, trainer.lr, rel_tol=1e-12,
                                                  abs_tol=0.0):
        raise ResumeMismatchError(
            f"{path}: the run was saved with lr={saved_lr!r}, this optimizer has "
            f"lr={trainer.lr!r}; resume with the saved rate, or change it explicitly "
            "with Trainer.resume(path, override={'lr': ...}) (for the examples: --lr)")
    for key, flag in (("batch_size", "--batch-size"), ("accumulate", "--accumulate")):
        if meta.get(key) != getattr(trainer, key):
            raise ResumeMismatchError(
                f"{path}: the run was saved with {key}={meta.get(key)!r}, this trainer has "
                f"{key}={getattr(trainer, key)!r}; resume with the saved value (for the "
                f"examples: {flag} {meta.get(key)})")
    saved = meta.get("callbacks")
    if not isinstance(saved, dict):
        raise ResumeMismatchError(f"{path}: its callbacks entry must be a dict of states, "
                                  f"got {type(saved).__name__}")
    schedule = trainer.schedule
    if (schedule is None) != ("schedule" not in saved):
        ours = "none" if schedule is None else type(schedule).__name__
        raise ResumeMismatchError(
            f"{path}: saved {'with' if 'schedule' in saved else 'without'} a "
            f"learning-rate schedule, but this trainer's schedule is {ours}; resume with "
            "the schedule the run started with (for the examples: the same --schedule)")
    for c in trainer.callbacks:
        if c.key in saved:
            fits(c.check_state_dict, saved[c.key])
    fits(trainer.state.check_state_dict, meta, trainer.model)


def apply_resume(trainer: Any, ck: Checkpoint, override: dict[str, Any], *,
                 allow_nonfinite: bool = False) -> None:
    """Load a checkpoint that :func:`check_resume` accepted into every part of the run."""
    trainer.model.load_state_dict(ck.model, backend=trainer.backend,
                                  allow_nonfinite=allow_nonfinite)
    # the optimizer holds the same Parameter objects, whose data was just replaced
    trainer.optimizer.load_state_dict(ck.optimizer)
    saved = ck.meta["callbacks"]
    for c in trainer.callbacks:
        if c.key in saved:
            c.load_state_dict(saved[c.key])
    trainer.state.load_state_dict(ck.meta, trainer.model)
    if "lr" in override:
        schedule = trainer.schedule
        if schedule is not None:
            schedule.base_lr = override["lr"]
            trainer.optimizer.lr = schedule.rate(schedule.epoch)
        else:
            trainer.optimizer.lr = override["lr"]
