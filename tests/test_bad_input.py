"""The bad-input catalogue: what a hostile but realistic user gets wrong, and what they get back.

Every case asserts
  * the exception type,
  * that the message names the argument or file, what was given and what was expected
    (``says``: substrings that must all appear),
  * that nothing changed: every object the case set up (modules, optimizers, schedules, losses,
    arrays) and every file under the case's temporary folder is compared before and after.

Cases are grouped by area (the id prefix): layers, losses, optim, schedules, data, loader,
checkpoint, plus trainer and cli. The backend/device cases live in test_bad_input_backend.py.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np
import pytest
from conftest import dev as _dev  # a copy of host data on the current backend
from conftest import use_backend

import xpnet
from xpnet import validate
from xpnet.data import BatchLoader, load_mnist
from xpnet.data.synthetic import circles, moons, spiral
from xpnet.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xpnet.models import TwoLayerNet
from xpnet.module import StateDictError
from xpnet.train import DivergenceGuard, LRSchedule, Trainer, evaluate


# ---------------------------------------------------------------------- the machinery
@dataclass
class Case:
    """``setup(tmp)`` returns the objects the case may touch; ``call(ctx)`` is the mistake."""

    id: str
    call: Callable[[dict], Any]
    exc: type[BaseException]
    says: tuple[str, ...]
    setup: Callable[[Path], dict] | None = None


def _freeze(value: Any) -> Any:
    """A comparable deep snapshot of an object the case set up."""
    if isinstance(value, xpnet.Module):
        return {"state": {k: xpnet.to_numpy(v).copy() for k, v in value.state_dict().items()},
                "grads": {k: None if p.grad is None else xpnet.to_numpy(p.grad).copy()
                          for k, p in value.parameters().items()},
                "training": value.training}
    if isinstance(value, xpnet.Parameter):
        return {"data": xpnet.to_numpy(value.data).copy(),
                "grad": None if value.grad is None else xpnet.to_numpy(value.grad).copy()}
    if isinstance(value, (xpnet.SGD.__mro__[1],)):  # Optimizer
        return {"vars": {k: v for k, v in vars(value).items()
                         if k not in ("params", "state", "_grad_hooks")},
                "params": {k: _freeze(p) for k, p in value.params.items()},
                "state": value.state_dict()["state"]}
    if isinstance(value, xpnet.schedules.Schedule):
        return {"state": value.state_dict(), "lr": value.optimizer.lr}
    if isinstance(value, Trainer):
        return {"model": _freeze(value.model), "opt": _freeze(value.optimizer),
                "sched": _freeze(value.schedule), "epoch": value.epoch,
                "step": value.step_count, "rng": value.rng.get_state(),
                "history": copy.deepcopy(value.history.records), "lr": value.optimizer.lr}
    if isinstance(value, np.ndarray):
        return value.copy()
    if array_api_compat.is_array_api_obj(value) and not isinstance(value, np.generic):
        # a device array: its device and a host copy (CuPy, torch and array_api_strict's
        # device1 arrays have no truth value and refuse an implicit conversion to NumPy)
        return ("device array", str(array_api_compat.device(value)),
                xpnet.to_numpy(value).copy())
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    if hasattr(value, "__dict__"):
        return {k: _freeze(v) for k, v in vars(value).items()}
    return copy.deepcopy(value)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden temp files included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    for x in (a, b):
        if array_api_compat.is_array_api_obj(x) and not isinstance(x, np.generic):
            raise TypeError(f"_same: a {type(x).__name__} reached the comparison; _freeze must "
                            "turn every array into a host copy first")
    return a == b


def run_case(case: Case, tmp_path: Path) -> None:
    ctx = case.setup(tmp_path) if case.setup else {}
    ctx["tmp"] = tmp_path
    before, files_before = _freeze({k: v for k, v in ctx.items() if k != "tmp"}), \
        _files(tmp_path)
    with pytest.raises(case.exc) as info:
        case.call(ctx)
    message = str(info.value)
    for part in case.says:
        part = part.replace("{tmp}", str(tmp_path))
        assert part in message, f"{part!r} not in the message {message!r}"
    assert "\n" not in message.strip() or case.id.startswith("data-"), message
    after = _freeze({k: v for k, v in ctx.items() if k != "tmp"})
    assert _same(before, after), "the failed call changed an object it was given"
    assert _files(tmp_path) == files_before, "the failed call wrote, changed or removed a file"


# ---------------------------------------------------------------------- setups
def _params() -> dict:
    return {"params": {"w": xpnet.Parameter(xpnet.to_device(np.ones((2, 2), np.float32))),
                       "b": xpnet.Parameter(xpnet.to_device(np.zeros(2, np.float32)))}}


def _opt() -> dict:
    ctx = _params()
    ctx["opt"] = xpnet.SGD(ctx["params"], lr=0.1)
    return ctx


def _cosine() -> dict:
    ctx = _opt()
    ctx["sched"] = xpnet.CosineLR(ctx["opt"], 10)
    return ctx


def _loss_ctx() -> dict:
    return {"loss": xpnet.SoftmaxCrossEntropy(), "mse": xpnet.MSE(),
            "z": _dev(np.random.default_rng(0).standard_normal((4, 3)), "float32")}


def _model_ctx(tmp: Path) -> dict:
    return {"model": TwoLayerNet(4, 3, 2, seed=0)}


def _linear_ctx(tmp: Path) -> dict:
    return {"lin": xpnet.Linear(3, 2), "conv": xpnet.Conv2d(1, 2, 3)}


def _write(tmp: Path, name: str, data: bytes) -> dict:
    (tmp / name).write_bytes(data)
    return {}


def _npz(tmp: Path, name: str, **arrays: Any) -> dict:
    np.savez(tmp / name, **arrays)
    return {}


def _good_checkpoint(tmp: Path) -> dict:
    model = TwoLayerNet(4, 3, 2, seed=0)
    save_checkpoint(tmp / "good.npz", model.state_dict())
    return {"model": TwoLayerNet(4, 5, 2, seed=1), "small": TwoLayerNet(4, 3, 3, seed=1)}


def _offline(tmp: Path) -> dict:
    (tmp / "afile").write_text("not a folder")
    (tmp / "empty").mkdir()
    return {}


def _with_env(name: str, value: str, call: Callable[[], Any]) -> Any:
    """call() with one environment variable set (restored afterwards)."""
    from unittest import mock
    with mock.patch.dict(os.environ, {name: value}):
        return call()


X = np.zeros((5, 2), np.float32)
Y = np.zeros(5, np.int64)
F32 = np.float32

def _xy(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(F32), np.arange(n) % 2


def _trainer(opt: str = "adam", hidden: int = 3, lr: float = 0.01, batch_size: int = 10,
             dtype: str = "float32", schedule: bool = True, **kw: Any) -> Trainer:
    model = TwoLayerNet(4, hidden, 2, seed=0)
    if dtype != "float32":
        model = xpnet.Sequential(xpnet.Linear(4, hidden, dtype=dtype), xpnet.ReLU(),
                                 xpnet.Linear(hidden, 2, dtype=dtype))
    optimizer = {"adam": lambda: xpnet.Adam(model, lr=lr),
                 "momentum": lambda: xpnet.Momentum(model, lr=lr, **kw),
                 "sgd": lambda: xpnet.SGD(model, lr=lr)}[opt]()
    sched = xpnet.CosineLR(optimizer, 9) if schedule else None
    return Trainer(model, optimizer, batch_size=batch_size,
                   callbacks=[LRSchedule(sched)] if sched else [])


def _saved_run(tmp: Path, **kw: Any) -> dict:
    """A checkpoint of a one-epoch Adam run (lr 0.01, batches of 10, cosine over 9 steps)."""
    x, y = _xy()
    first = _trainer()
    first.fit(x, y, 1)
    first.save(tmp / "run.npz")
    return {"trainer": _trainer(**kw)}


def _fresh_trainer(tmp: Path) -> dict:
    return {"trainer": _trainer()}


def _fit(c: dict, x: Any = None, y: Any = None, **kw: Any) -> Any:
    x0, y0 = _xy()
    return c["trainer"].fit(x0 if x is None else x, y0 if y is None else y, 1, **kw)


def _with(a: np.ndarray, index: tuple, value: Any) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


CASES = [
    # ------------------------------------------------------------------ layers
    Case("layers-linear-zero-features", lambda c: xpnet.Linear(0, 3), ValueError,
         ("Linear", "in_features", "positive integer", "got 0")),
    Case("layers-linear-float-features", lambda c: xpnet.Linear(2.5, 3), TypeError,
         ("in_features", "positive integer", "got 2.5")),
    Case("layers-linear-bool-features", lambda c: xpnet.Linear(3, True), TypeError,
         ("out_features", "positive integer", "got True")),
    Case("layers-linear-str-features", lambda c: xpnet.Linear("3", 2), TypeError,
         ("in_features", "positive integer", "got '3'")),
    Case("layers-conv-zero-kernel", lambda c: xpnet.Conv2d(1, 2, 0), ValueError,
         ("Conv2d", "kernel_size", "positive integer", "got 0")),
    Case("layers-conv-zero-stride", lambda c: xpnet.Conv2d(1, 2, 3, stride=0), ValueError,
         ("stride", "positive integer", "got 0")),
    Case("layers-conv-negative-padding", lambda c: xpnet.Conv2d(1, 2, 3, padding=-1),
         ValueError, ("padding", "non-negative integer", "got -1")),
    Case("layers-conv-float-padding", lambda c: xpnet.Conv2d(1, 2, 3, padding=1.5), TypeError,
         ("padding", "non-negative integer", "got 1.5")),
    Case("layers-pool-padding-over-half", lambda c: xpnet.MaxPool2d(2, padding=2), ValueError,
         ("MaxPool2d", "padding", "at most kernel_size // 2 = 1", "got 2")),
    Case("layers-pool-zero-stride", lambda c: xpnet.AvgPool2d(2, 0), ValueError,
         ("AvgPool2d", "stride", "positive integer", "got 0")),
    Case("layers-batchnorm-zero-features", lambda c: xpnet.BatchNorm(0), ValueError,
         ("BatchNorm", "num_features", "positive integer", "got 0")),
    Case("layers-batchnorm-momentum", lambda c: xpnet.BatchNorm(3, momentum=2), ValueError,
         ("BatchNorm", "momentum", "[0, 1]", "got 2")),
    Case("layers-dropout-p-one", lambda c: xpnet.Dropout(1.0), ValueError,
         ("Dropout", "p", "[0, 1)", "got 1.0")),
    Case("layers-sequential-list", lambda c: xpnet.Sequential([xpnet.Linear(2, 2)]), TypeError,
         ("Sequential", "item 0", "list", "Module")),
    Case("layers-linear-wrong-input", lambda c: c["lin"](_dev(np.zeros((2, 4), F32))),
         ValueError, ("Linear(3 -> 2)", "x", "(2, 4)", "expected (N, 3)"), _linear_ctx),
    Case("layers-conv-3d-input", lambda c: c["conv"](_dev(np.zeros((2, 1, 4), F32))),
         ValueError, ("Conv2d", "x", "(2, 1, 4)", "expected (N, 1, H, W)"), _linear_ctx),
    Case("layers-conv-image-too-small", lambda c: c["conv"](_dev(np.zeros((2, 1, 2, 2), F32))),
         ValueError, ("Conv2d", "x", "(2, 1, 2, 2)", "smaller than the 3x3 kernel"),
         _linear_ctx),
    # ------------------------------------------------------------------ losses
    Case("losses-1d-logits", lambda c: c["loss"](_dev(np.zeros(4, F32)), _dev(Y[:4])),
         ValueError, ("SoftmaxCrossEntropy", "logits", "(4,)", "expected (N, C)"),
         lambda t: _loss_ctx()),
    Case("losses-float-labels", lambda c: c["loss"](c["z"], _dev(np.zeros(4, F32))), TypeError,
         ("SoftmaxCrossEntropy target", "integer class labels", "float32"),
         lambda t: _loss_ctx()),
    Case("losses-labels-out-of-range", lambda c: c["loss"](c["z"], _dev(np.array([0, 1, 2, 5]))),
         ValueError, ("labels", "[0, 2]", "3 classes", "from 0 to 5"), lambda t: _loss_ctx()),
    Case("losses-negative-label", lambda c: c["loss"](c["z"], _dev(np.array([0, -1, 2, 1]))),
         ValueError, ("labels", "[0, 2]", "from -1 to 2"), lambda t: _loss_ctx()),
    Case("losses-label-count", lambda c: c["loss"](c["z"], _dev(np.array([0, 1, 2]))),
         ValueError, ("target", "3 labels", "expected shape (4,)"), lambda t: _loss_ctx()),
    Case("losses-target-shape", lambda c: c["loss"](c["z"], _dev(np.zeros((4, 4), F32))),
         ValueError, ("target", "(4, 4)", "expected integer labels (4,) or float one-hot (4, 3)"),
         lambda t: _loss_ctx()),
    Case("losses-integer-one-hot", lambda c: c["loss"](c["z"], _dev(np.eye(3, dtype=np.int64)[
        [0, 1, 2, 0]])), ValueError, ("target", "int64", "float one-hot (4, 3)"),
        lambda t: _loss_ctx()),
    Case("losses-integer-logits", lambda c: c["loss"](_dev(np.zeros((4, 3), np.int64)),
                                                      _dev(Y[:4])), TypeError,
         ("predictions", "int64", "floating dtype"), lambda t: _loss_ctx()),
    Case("losses-mse-shape", lambda c: c["mse"](c["z"], _dev(np.zeros((4, 2), F32))), ValueError,
         ("MSE", "target", "(4, 2)", "expected the prediction's shape (4, 3)"),
         lambda t: _loss_ctx()),
    Case("losses-real-valued-targets",
         lambda c: c["loss"](c["z"], _dev(np.linspace(-1, 1, 4, dtype=F32)[:, None])),
         ValueError, ("target", "(4, 1)", "float32", "use MSE"), lambda t: _loss_ctx()),
    Case("losses-single-output",
         lambda c: c["loss"](_dev(np.zeros((4, 1), F32)), _dev(np.zeros((4, 1), F32))),
         ValueError, ("SoftmaxCrossEntropy", "(4, 1)", "single output", "use MSE"),
         lambda t: _loss_ctx()),
    Case("losses-negative-soft-targets",
         lambda c: c["loss"](c["z"], _dev(np.array([[1.5, -0.5, 0]] * 4, F32))),
         ValueError, ("target: row 0 holds -0.5", "4 of 4 rows", "non-negative", "use MSE"),
         lambda t: _loss_ctx()),
    Case("losses-zero-sum-soft-targets",
         lambda c: c["loss"](c["z"], _dev(np.zeros((4, 3), F32))),
         ValueError, ("target: row 0 sums to 0", "positive number"), lambda t: _loss_ctx()),
    Case("losses-empty-batch",
         lambda c: c["loss"](_dev(np.zeros((0, 3), F32)), _dev(np.zeros(0, np.int64))),
         ValueError, ("SoftmaxCrossEntropy", "empty batch", "(0, 3)", "at least one"),
         lambda t: _loss_ctx()),
    Case("losses-mse-empty-batch",
         lambda c: c["mse"](_dev(np.zeros((0, 3), F32)), _dev(np.zeros((0, 3), F32))),
         ValueError, ("MSE", "empty batch", "(0, 3)"), lambda t: _loss_ctx()),
    Case("losses-check-range-not-bool", lambda c: xpnet.SoftmaxCrossEntropy("yes"), TypeError,
         ("SoftmaxCrossEntropy", "check_range", "True or False", "'yes'")),
    # ------------------------------------------------------------------ optimizers
    Case("optim-lr-negative", lambda c: xpnet.SGD(c["params"], lr=-1.0), ValueError,
         ("SGD", "lr", "finite number >= 0", "got -1.0"), lambda t: _params()),
    Case("optim-lr-inf", lambda c: xpnet.Adam(c["params"], lr=float("inf")), ValueError,
         ("Adam", "lr", "finite number >= 0", "got inf"), lambda t: _params()),
    Case("optim-lr-nan", lambda c: xpnet.SGD(c["params"], lr=float("nan")), ValueError,
         ("lr", "finite number >= 0", "got nan"), lambda t: _params()),
    Case("optim-lr-str", lambda c: xpnet.SGD(c["params"], lr="0.1"), TypeError,
         ("lr", "finite number >= 0", "got '0.1'"), lambda t: _params()),
    Case("optim-lr-bool", lambda c: xpnet.SGD(c["params"], lr=True), TypeError,
         ("lr", "finite number >= 0", "got True"), lambda t: _params()),
    Case("optim-weight-decay-inf", lambda c: xpnet.SGD(c["params"], weight_decay=np.inf),
         ValueError, ("weight_decay", "finite number >= 0", "got inf"), lambda t: _params()),
    Case("optim-l1-negative", lambda c: xpnet.SGD(c["params"], l1=-0.5), ValueError,
         ("l1", "finite number >= 0", "got -0.5"), lambda t: _params()),
    Case("optim-clip-zero", lambda c: xpnet.SGD(c["params"], clip_norm=0), ValueError,
         ("clip_norm", "finite number > 0", "got 0"), lambda t: _params()),
    Case("optim-momentum-one", lambda c: xpnet.Momentum(c["params"], momentum=1.0), ValueError,
         ("Momentum", "momentum", "[0, 1)", "got 1.0"), lambda t: _params()),
    Case("optim-nesterov-momentum-negative",
         lambda c: xpnet.Nesterov(c["params"], momentum=-0.1), ValueError,
         ("Nesterov", "momentum", "[0, 1)", "got -0.1"), lambda t: _params()),
    Case("optim-adam-beta2-one", lambda c: xpnet.Adam(c["params"], betas=(0.9, 1.0)),
         ValueError, ("Adam", "betas[1]", "[0, 1)", "got 1.0"), lambda t: _params()),
    Case("optim-adam-betas-single", lambda c: xpnet.AdamW(c["params"], betas=(0.9,)), TypeError,
         ("AdamW", "betas", "pair", "(0.9,)"), lambda t: _params()),
    Case("optim-adam-eps-zero", lambda c: xpnet.Adam(c["params"], eps=0.0), ValueError,
         ("Adam", "eps", "finite number > 0", "got 0.0"), lambda t: _params()),
    Case("optim-rmsprop-alpha", lambda c: xpnet.RMSProp(c["params"], alpha=1.5), ValueError,
         ("RMSProp", "alpha", "[0, 1)", "got 1.5"), lambda t: _params()),
    Case("optim-adagrad-eps-negative", lambda c: xpnet.AdaGrad(c["params"], eps=-1e-8),
         ValueError, ("AdaGrad", "eps", "finite number > 0", "got -1e-08"), lambda t: _params()),
    Case("optim-no-parameters", lambda c: xpnet.SGD({}, lr=0.1), ValueError,
         ("SGD", "no parameters to optimise")),
    Case("optim-step-without-grads", lambda c: c["opt"].step(), RuntimeError,
         ("SGD.step", "['w', 'b']", "no gradient", "call backward() before step()"),
         lambda t: _opt()),
    Case("optim-hook-not-callable", lambda c: c["opt"].register_grad_hook(3), TypeError,
         ("register_grad_hook", "hook must be a callable", "got 3"), lambda t: _opt()),
    Case("optim-clip-grad-norm-negative", lambda c: xpnet.clip_grad_norm(c["params"], -1.0),
         ValueError, ("clip_grad_norm", "max_norm", "finite number > 0", "got -1.0"),
         lambda t: _params()),
    # ------------------------------------------------------------------ schedules
    Case("schedules-steplr-zero", lambda c: xpnet.StepLR(c["opt"], 0), ValueError,
         ("StepLR", "step_size", "positive integer", "got 0"), lambda t: _opt()),
    Case("schedules-steplr-float", lambda c: xpnet.StepLR(c["opt"], 2.5), TypeError,
         ("StepLR", "step_size", "positive integer", "got 2.5"), lambda t: _opt()),
    Case("schedules-steplr-gamma-zero", lambda c: xpnet.StepLR(c["opt"], 2, gamma=0), ValueError,
         ("StepLR", "gamma", "finite number > 0", "got 0"), lambda t: _opt()),
    Case("schedules-exponential-gamma-inf", lambda c: xpnet.ExponentialLR(c["opt"], np.inf),
         ValueError, ("ExponentialLR", "gamma", "finite number > 0", "got inf"),
         lambda t: _opt()),
    Case("schedules-cosine-zero-epochs", lambda c: xpnet.CosineLR(c["opt"], 0), ValueError,
         ("CosineLR", "total", "positive integer", "got 0"), lambda t: _opt()),
    Case("schedules-cosine-warmup-too-long", lambda c: xpnet.CosineLR(c["opt"], 10, warmup=10),
         ValueError, ("CosineLR", "warmup", "[0, total=10)", "got 10"), lambda t: _opt()),
    Case("schedules-cosine-min-lr-negative", lambda c: xpnet.CosineLR(c["opt"], 10, min_lr=-1),
         ValueError, ("CosineLR", "min_lr", "finite number >= 0", "got -1"), lambda t: _opt()),
    Case("schedules-not-an-optimizer", lambda c: xpnet.StepLR(object(), 2), TypeError,
         ("StepLR", "optimizer", "Optimizer", "got object")),
    Case("schedules-per-step-not-bool", lambda c: xpnet.CosineLR(c["opt"], 10, per_step=1),
         TypeError, ("CosineLR", "per_step", "True or False", "got 1"), lambda t: _opt()),
    Case("schedules-load-other-settings",
         lambda c: c["sched"].load_state_dict(dict(c["sched"].state_dict(), total=20,
                                                   epoch=5)),
         ValueError, ("CosineLR", "total=20", "total=10", "resume with the "
                      "settings the run started with"), lambda t: _cosine()),
    # ------------------------------------------------------------------ data
    Case("data-spiral-zero", lambda c: spiral(0), ValueError,
         ("spiral", "n_per_class", "positive integer", "got 0")),
    Case("data-spiral-float-classes", lambda c: spiral(10, 2.5), TypeError,
         ("spiral", "n_classes", "positive integer", "got 2.5")),
    Case("data-moons-one", lambda c: moons(1), ValueError, ("moons", "n", "integer >= 2",
                                                            "got 1")),
    Case("data-moons-nan-noise", lambda c: moons(noise=float("nan")), ValueError,
         ("moons", "noise", "finite number >= 0", "got nan")),
    Case("data-circles-factor", lambda c: circles(factor=1.0), ValueError,
         ("circles", "factor", "0 < factor < 1", "got 1.0")),
    Case("data-circles-inf-noise", lambda c: circles(noise=np.inf), ValueError,
         ("circles", "noise", "finite number >= 0", "got inf")),
    Case("data-mnist-missing-data-dir", lambda c: load_mnist(c["tmp"] / "nope", download=True),
         FileNotFoundError, ("data_dir does not exist", "{tmp}/nope", "expected a folder"),
         _offline),
    Case("data-mnist-data-dir-is-file", lambda c: load_mnist(c["tmp"] / "afile"),
         NotADirectoryError, ("data_dir is a file", "{tmp}/afile", "expected a folder"),
         _offline),
    Case("data-mnist-data-dir-not-path", lambda c: load_mnist(3), TypeError,
         ("data_dir", "folder path", "got 3")),
    Case("data-mnist-empty-data-dir", lambda c: load_mnist(c["tmp"] / "empty"),
         FileNotFoundError, ("data_dir {tmp}/empty holds no complete mnist set",
                             "{tmp}/empty has none of them", "omit data_dir"), _offline),
    Case("data-mnist-empty-data-dir-flag",
         lambda c: load_mnist(c["tmp"] / "empty", data_dir_name="--data-dir"),
         FileNotFoundError, ("--data-dir {tmp}/empty holds no complete mnist set",
                             "omit --data-dir to download them into"), _offline),
    Case("data-mnist-env-typo",
         lambda c: _with_env("XPNET_DATA_DIR", str(c["tmp"] / "typo"),
                             lambda: load_mnist(data_dir_name="--data-dir")),
         FileNotFoundError, ("XPNET_DATA_DIR does not exist: {tmp}/typo",
                             "nothing is downloaded instead"), _offline),
    Case("data-mnist-env-empty",
         lambda c: _with_env("XPNET_DATA_DIR", str(c["tmp"] / "empty"), load_mnist),
         FileNotFoundError, ("XPNET_DATA_DIR {tmp}/empty holds no complete mnist set",
                             "unset XPNET_DATA_DIR"), _offline),
    Case("data-mnist-train-limit-zero", lambda c: load_mnist(c["tmp"], train_limit=0),
         ValueError, ("train_limit", "positive integer", "got 0"), _offline),
    # ------------------------------------------------------------------ loader
    Case("loader-batch-size-zero", lambda c: BatchLoader(X, Y, 0), ValueError,
         ("batch_size", "positive integer", "got 0")),
    Case("loader-batch-size-float", lambda c: BatchLoader(X, Y, 2.5), ValueError,
         ("batch_size", "positive integer", "got 2.5")),
    Case("loader-batch-size-bool", lambda c: BatchLoader(X, Y, True), ValueError,
         ("batch_size", "positive integer", "got True")),
    Case("loader-count-mismatch", lambda c: BatchLoader(X, Y[:4], 2), ValueError,
         ("5 inputs and 4 labels",)),
    Case("loader-float-labels", lambda c: BatchLoader(X, Y.astype(F32), 2), ValueError,
         ("y", "integer class labels", "float32")),
    Case("loader-resident", lambda c: BatchLoader(X, Y, 2, resident="yes"), ValueError,
         ("resident", "True, False or 'auto'", "'yes'")),
    # ------------------------------------------------------------------ checkpoint
    Case("checkpoint-npy", lambda c: load_checkpoint(c["tmp"] / "a.npy"), CheckpointError,
         ("{tmp}/a.npy", "single NumPy array (.npy)", "expected an .npz checkpoint"),
         lambda t: np.save(t / "a.npy", np.zeros(3)) or {}),
    Case("checkpoint-directory", lambda c: load_checkpoint(c["tmp"]), CheckpointError,
         ("{tmp}", "is a directory", "expected an .npz checkpoint")),
    Case("checkpoint-empty-file", lambda c: load_checkpoint(c["tmp"] / "e.npz"),
         CheckpointError, ("{tmp}/e.npz", "an empty file", "expected an .npz checkpoint"),
         lambda t: _write(t, "e.npz", b"")),
    Case("checkpoint-text-file", lambda c: load_checkpoint(c["tmp"] / "t.npz"), CheckpointError,
         ("{tmp}/t.npz", "not a zip/.npz file", "expected an .npz checkpoint"),
         lambda t: _write(t, "t.npz", b"hello world\n")),
    Case("checkpoint-truncated", lambda c: load_checkpoint(c["tmp"] / "good.npz"),
         CheckpointError, ("{tmp}/good.npz", "truncated or corrupt", "expected an .npz"),
         lambda t: _write(t, "good.npz", (_good_checkpoint(t) and b"")
                          or (t / "good.npz").read_bytes()[:300])),
    Case("checkpoint-no-meta", lambda c: load_checkpoint(c["tmp"] / "n.npz"), CheckpointError,
         ("{tmp}/n.npz", "no 'meta' entry", "not an xpnet checkpoint"),
         lambda t: _npz(t, "n.npz", w=np.zeros(2))),
    Case("checkpoint-meta-not-json", lambda c: load_checkpoint(c["tmp"] / "j.npz"),
         CheckpointError, ("{tmp}/j.npz", "'meta' entry is not valid JSON", "expected"),
         lambda t: _npz(t, "j.npz", meta=np.array("{not json"))),
    Case("checkpoint-meta-json-list", lambda c: load_checkpoint(c["tmp"] / "l.npz"),
         CheckpointError, ("{tmp}/l.npz", "JSON list", "expected an object"),
         lambda t: _npz(t, "l.npz", meta=np.array(json.dumps([1, 2])))),
    Case("checkpoint-meta-array", lambda c: load_checkpoint(c["tmp"] / "m.npz"),
         CheckpointError, ("{tmp}/m.npz", "'meta' entry is a float64 array", "one JSON string"),
         lambda t: _npz(t, "m.npz", meta=np.zeros(3))),
    Case("checkpoint-other-format", lambda c: load_checkpoint(c["tmp"] / "f.npz"),
         CheckpointError, ("{tmp}/f.npz", "format 'other-9'", "expected 'xpnet-checkpoint-2'"),
         lambda t: _npz(t, "f.npz", meta=np.array(json.dumps({"format": "other-9"})))),
    Case("checkpoint-pickled", lambda c: load_checkpoint(c["tmp"] / "p.npz"), CheckpointError,
         ("{tmp}/p.npz", "pickled Python objects", "expected an .npz checkpoint"),
         lambda t: _npz(t, "p.npz", meta=np.array([{"a": 1}], dtype=object))),
    Case("checkpoint-missing", lambda c: load_checkpoint(c["tmp"] / "gone.npz"),
         FileNotFoundError, ("{tmp}/gone.npz", "does not exist", "expected an .npz")),
    Case("checkpoint-save-to-directory", lambda c: save_checkpoint(c["tmp"], {"w": X}),
         IsADirectoryError, ("{tmp}", "is a directory", "expected a file path")),
    Case("checkpoint-save-non-json-meta",
         lambda c: save_checkpoint(c["tmp"] / "x.npz", {"w": X}, meta={"f": object()}),
         TypeError, ("{tmp}/x.npz", "meta must hold JSON values", "object")),
    Case("checkpoint-save-model-state-none",
         lambda c: save_checkpoint(c["tmp"] / "n.npz", None), TypeError,
         ("save_checkpoint", "model_state", "dict of arrays", "got NoneType")),
    Case("checkpoint-state-dict-keys",
         lambda c: c["model"].load_state_dict({"0.W": np.zeros((4, 5), F32)}), StateDictError,
         ("does not fit this model", "missing ['0.b', '2.W', '2.b']", "unexpected []"),
         _good_checkpoint),
    Case("checkpoint-state-dict-shape",
         lambda c: c["model"].load_state_dict(load_checkpoint(c["tmp"] / "good.npz").model),
         ValueError, ("parameter '0.W'", "saved shape (4, 3)", "the model's (4, 5)"),
         _good_checkpoint),
    # ------------------------------------------------------------------ trainer
    Case("trainer-batch-size-zero", lambda c: _trainer(batch_size=0), ValueError,
         ("batch_size", "positive integer", "got 0")),
    Case("trainer-divergence-factor", lambda c: Trainer(c["model"], xpnet.SGD(c["model"]),
                                                        callbacks=[DivergenceGuard(factor=0.5)]),
        ValueError, ("DivergenceGuard", "factor", "> 1", "got 0.5"), _model_ctx),
    Case("trainer-optimizer-string", lambda c: Trainer(c["model"], "adam"), TypeError,
         ("Trainer", "optimizer", "xpnet Optimizer", "'adam'"), _model_ctx),
    Case("trainer-seed-negative", lambda c: Trainer(c["model"], xpnet.SGD(c["model"]), seed=-1),
         ValueError, ("Trainer", "seed", "non-negative integer", "got -1"), _model_ctx),
    Case("trainer-log-interval-zero",
         lambda c: Trainer(c["model"], xpnet.SGD(c["model"]), log_interval=0), ValueError,
         ("Trainer", "log_interval", "positive integer", "got 0"), _model_ctx),
    Case("trainer-schedule-of-another-optimizer",
         lambda c: Trainer(c["model"], xpnet.SGD(c["model"]),
                           callbacks=[LRSchedule(xpnet.StepLR(xpnet.SGD(c["model"]), 2))]),
         ValueError,
         ("Trainer", "schedule drives another optimizer", "expected a schedule built on this"),
         _model_ctx),
    Case("trainer-epochs-negative", lambda c: c["trainer"].fit(*_xy(), -1), ValueError,
         ("epochs", "non-negative integer", "got -1"), _fresh_trainer),
    Case("trainer-nan-x-train", lambda c: _fit(c, x=_with(_xy()[0], (7, 2), np.nan)),
         ValueError, ("x_train", "row 7 holds NaN", "expected finite values"), _fresh_trainer),
    Case("trainer-inf-x-train", lambda c: _fit(c, x=_with(_xy()[0], (3, 0), -np.inf)),
         ValueError, ("x_train", "row 3 holds an infinite value", "expected finite values"),
         _fresh_trainer),
    Case("trainer-nan-x-test", lambda c: _fit(c, x_test=_with(_xy()[0], (29, 1), np.nan),
                                              y_test=_xy()[1]),
         ValueError, ("x_test", "row 29 holds NaN", "expected finite values"), _fresh_trainer),
    Case("trainer-labels-out-of-range", lambda c: _fit(c, y=_with(_xy()[1], (4,), 2)),
         ValueError, ("y_train", "row 4 holds label 2", "expected labels in [0, 1]"),
         _fresh_trainer),
    Case("trainer-test-labels-negative",
         lambda c: _fit(c, x_test=_xy()[0], y_test=_with(_xy()[1], (6,), -1)),
         ValueError, ("y_test", "row 6 holds label -1", "expected labels in [0, 1]"),
         _fresh_trainer),
    Case("trainer-empty-training-set", lambda c: _fit(c, x=_xy()[0][:0], y=_xy()[1][:0]),
         ValueError, ("x_train is empty", "expected at least one example"), _fresh_trainer),
    Case("trainer-count-mismatch", lambda c: _fit(c, y=_xy()[1][:29]), ValueError,
         ("training data", "30 inputs but 29 labels", "expected equal counts"),
         _fresh_trainer),
    Case("trainer-evaluate-labels-out-of-range",
         lambda c: c["trainer"].evaluate(_xy()[0], _with(_xy()[1], (11,), 9)), ValueError,
         ("evaluate: y", "row 11 holds label 9", "expected labels in [0, 1]"), _fresh_trainer),
    Case("trainer-evaluate-empty", lambda c: evaluate(c["trainer"].model, xpnet.MSE(),
                                                      _xy()[0][:0], _xy()[0][:0]),
         ValueError, ("evaluate", "x is empty", "expected at least one example"),
         _fresh_trainer),
    Case("trainer-resume-adam-into-momentum", lambda c: c["trainer"].resume(c["tmp"] / "run.npz"),
         xpnet.io.checkpoint.ResumeMismatchError, ("{tmp}/run.npz", "optimizer Adam",
                                                "this one is Momentum", "resume with Adam"),
         lambda t: _saved_run(t, opt="momentum")),
    Case("trainer-resume-model-shape", lambda c: c["trainer"].resume(c["tmp"] / "run.npz"),
         xpnet.io.checkpoint.ResumeMismatchError, ("{tmp}/run.npz", "parameter '0.W'",
                                                "shape (4, 3)", "the model's (4, 5)"),
         lambda t: _saved_run(t, hidden=5)),
    Case("trainer-resume-dtype", lambda c: c["trainer"].resume(c["tmp"] / "run.npz"),
         xpnet.io.checkpoint.ResumeMismatchError, ("{tmp}/run.npz", "saved as float32",
                                                "this model's is float64"),
         lambda t: _saved_run(t, dtype="float64")),
    Case("trainer-resume-lr", lambda c: c["trainer"].resume(c["tmp"] / "run.npz"),
         xpnet.io.checkpoint.ResumeMismatchError, ("{tmp}/run.npz", "saved with lr=0.01",
                                                "this optimizer has lr=0.05", "override"),
         lambda t: _saved_run(t, lr=0.05)),
    Case("trainer-resume-batch-size", lambda c: c["trainer"].resume(c["tmp"] / "run.npz"),
         xpnet.io.checkpoint.ResumeMismatchError, ("{tmp}/run.npz", "batch_size=10",
                                                "batch_size=5", "--batch-size 10"),
         lambda t: _saved_run(t, batch_size=5)),
    Case("trainer-resume-without-schedule", lambda c: c["trainer"].resume(c["tmp"] / "run.npz"),
         xpnet.io.checkpoint.ResumeMismatchError, ("{tmp}/run.npz", "saved with a learning-rate "
                                                "schedule", "schedule is none"),
         lambda t: _saved_run(t, schedule=False)),
    Case("trainer-resume-override-other-key",
         lambda c: c["trainer"].resume(c["tmp"] / "run.npz", override={"betas": (0.5, 0.5)}),
         ValueError, ("override", "only lr", "['betas']"), _saved_run),
    Case("trainer-resume-override-lr-inf",
         lambda c: c["trainer"].resume(c["tmp"] / "run.npz", override={"lr": float("inf")}),
         ValueError, ("override['lr']", "finite number >= 0", "got inf"), _saved_run),
    Case("trainer-resume-weights-only-file",
         lambda c: c["trainer"].resume(c["tmp"] / "w.npz"), xpnet.io.checkpoint.ResumeMismatchError,
         ("{tmp}/w.npz", "not written by Trainer.save", "no epoch, step, rng",
          "expected a Trainer checkpoint"),
         lambda t: save_checkpoint(t / "w.npz", TwoLayerNet(4, 3, 2).state_dict())
         and _fresh_trainer(t)),
    Case("trainer-resume-missing-file", lambda c: c["trainer"].resume(c["tmp"] / "nope.npz"),
         FileNotFoundError, ("{tmp}/nope.npz", "does not exist", "expected an .npz"),
         _fresh_trainer),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing downloads
    monkeypatch.delenv("XPNET_DATA_DIR", raising=False)
    run_case(case, tmp_path)


def test_catalogue_covers_every_area():
    assert len(CASES) + len(CLI_CASES) >= 70
    areas = {c.id.split("-")[0] for c in CASES}
    assert areas >= {"layers", "losses", "optim", "schedules", "data", "loader", "checkpoint",
                     "trainer"}
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------- valid values accepted
@pytest.mark.parametrize("make", [
    lambda p: xpnet.SGD(p, lr=np.float32(1e-3)),
    lambda p: xpnet.Adam(p, lr=np.float64(1e-3), betas=(np.float32(0.9), 0.999),
                         eps=np.float32(1e-8)),
    lambda p: xpnet.Momentum(p, lr=1, momentum=np.float64(0.5), weight_decay=np.int64(0)),
    lambda p: xpnet.RMSProp(p, lr=np.float32(0.01), clip_norm=np.int32(5)),
], ids=["sgd", "adam", "momentum", "rmsprop"])
def test_numpy_scalars_are_accepted_and_stored_as_python_numbers(make):
    opt = make(_params()["params"])
    for name in ("lr", "weight_decay", "l1"):
        assert type(getattr(opt, name)) is float
    assert json.dumps(opt.state_dict()["lr"])  # checkpoint metadata stays plain JSON


def test_numpy_integers_are_accepted_by_layers_schedules_and_data():
    lin = xpnet.Linear(np.int64(3), np.int32(2))
    assert lin.W.shape == (3, 2) and type(lin.in_features) is int
    assert xpnet.Conv2d(1, 2, np.int64(3), stride=np.int64(1), padding=np.int64(1))(
        _dev(np.zeros((1, 1, 4, 4), F32))).shape == (1, 2, 4, 4)
    opt = _opt()["opt"]
    sched = xpnet.CosineLR(opt, np.int64(10), warmup=np.int64(2))
    assert sched.total == 10 and type(sched.warmup) is int
    X2, y2 = spiral(np.int64(5), np.int64(2), noise=np.float32(0.1))
    assert X2.shape == (10, 2)
    assert len(BatchLoader(X, Y, np.int64(2))) == 3


@pytest.mark.parametrize("value, ok", [
    (1, True), (np.int64(1), True), (np.uint8(3), True), (True, False), (np.bool_(True), False),
    (1.0, False), ("1", False), (None, False), (0, False), (-3, False),
])
def test_positive_int(value, ok):
    if ok:
        assert validate.positive_int("o", "n", value) == int(value)
    else:
        with pytest.raises(ValueError, match=r"^o: n must be a positive integer, got "):
            validate.positive_int("o", "n", value)


@pytest.mark.parametrize("value, ok", [
    (0.0, True), (np.float32(1e-3), True), (3, True), (np.int64(2), True),
    (float("inf"), False), (-float("inf"), False), (float("nan"), False), (np.float32("nan"),
                                                                          False),
    (-1e-9, False), (True, False), ("0.1", False), (None, False), (1 + 0j, False),
])
def test_non_negative_float(value, ok):
    if ok:
        out = validate.non_negative_float("o", "x", value)
        assert type(out) is float and out == float(value)
    else:
        with pytest.raises(ValueError, match=r"^o: x must be a finite number >= 0, got "):
            validate.non_negative_float("o", "x", value)


def test_wrong_kinds_are_type_errors_that_value_error_also_catches():
    with pytest.raises(TypeError):
        validate.positive_float("o", "x", "1")
    with pytest.raises(ValueError):
        validate.positive_float("o", "x", "1")
    with pytest.raises(ValueError, match=r"^o: c must be one of 'a', 'b', got 'z'$"):
        validate.choice("o", "c", "z", ["a", "b"])
    assert validate.choice("o", "c", "b", ["a", "b"]) == "b"
    assert validate.probability("o", "p", 1.0, closed=True) == 1.0


def test_download_write_errors_name_the_file_and_are_not_mirror_failures(tmp_path, monkeypatch):
    """Disk full while a download is written: the error names the file; no other mirror is
    tried (none could help) and no partial file is left."""
    from xpnet.data import mnist as mnist_module
    tried = []

    class Response:
        headers = {"Content-Length": "10"}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, n):
            return b"x" * 10 if not tried.append(1) and len(tried) == 1 else b""

    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", lambda url, timeout: Response())
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()
            return False

        def write(self, b):
            raise OSError(28, os.strerror(28))

    monkeypatch.setattr(mnist_module.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    import dataclasses
    src = dataclasses.replace(mnist_module.MNIST,
                              mirrors=("http://a.invalid/", "http://b.invalid/"))
    with pytest.raises(OSError) as info:
        mnist_module._download(mnist_module.TRAIN_LABELS, tmp_path, src, False)
    assert not isinstance(info.value, mnist_module.DownloadError)
    assert info.value.errno == 28 and str(tmp_path / mnist_module.TRAIN_LABELS) in str(info.value)
    assert len(tried) == 1  # the second mirror was not tried
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- the harness can fail
def _mutate_then_fail(c: dict) -> None:
    c["opt"].lr = 5.0
    raise ValueError("SGD: lr must be x, got 5.0")


def _write_then_fail(c: dict) -> None:
    (c["tmp"] / "half.npz").write_bytes(b"PK")
    raise ValueError("x: y must be z, got w")


@pytest.mark.parametrize("case", [
    Case("changed-object", _mutate_then_fail, ValueError, ("lr",), lambda t: _opt()),
    Case("wrote-file", _write_then_fail, ValueError, ("y",)),
    Case("vague-message", lambda c: xpnet.Linear(0, 3), ValueError, ("in_features", "got -1")),
    Case("wrong-type", lambda c: xpnet.Linear(0, 3), TypeError, ("in_features",)),
], ids=lambda c: c.id)
def test_the_harness_detects_a_defective_error_path(case, tmp_path):
    with pytest.raises((AssertionError, pytest.fail.Exception, ValueError)):
        run_case(case, tmp_path)


def test_the_harness_compares_device_arrays_through_host_copies():
    """A device array, held directly or inside an object (a loss's cache), is compared by its
    device and a host copy: on CuPy (and array_api_strict's device1 here) ``a == b`` is an
    array with no truth value, and NumPy conversion must be explicit."""
    pytest.importorskip("array_api_strict")
    from types import SimpleNamespace

    with use_backend("array_api_strict", "device1"):
        z = _dev(np.arange(6.0).reshape(2, 3), "float32")

        def ctx(arr):
            return {"z": arr, "loss": SimpleNamespace(cache=arr)}

        before = _freeze(ctx(z))
        assert _same(before, _freeze(ctx(z)))
        assert not _same(before, _freeze(ctx(z + 1)))  # changed values are seen
    moved = _freeze(ctx(_dev(np.arange(6.0).reshape(2, 3), "float32")))  # same values, CPU
    assert not _same(before, moved)
    with pytest.raises(TypeError, match="_freeze must"):
        _same(z, z)


# ---------------------------------------------------------------------- CLIs
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MNIST_DIR = Path(os.environ.get("XPNET_DATA_DIR") or
                 Path(__file__).resolve().parents[2] / "shared" / "data")


def _example_main(script: str, monkeypatch) -> Callable:
    """The example's main, imported in-process (its ``common`` from examples/)."""
    import importlib.util
    import sys
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in ("common", script):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location(script, EXAMPLES / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, script, module)
    return module.main


def _mlp_checkpoint(tmp: Path) -> None:
    """A checkpoint the MNIST MLP example would write (784-100-10, Adam 1e-3, cosine)."""
    model = TwoLayerNet(784, 100, 10, seed=0)
    opt = xpnet.Adam(model, lr=1e-3)
    trainer = Trainer(model, opt, batch_size=100,
                      callbacks=[LRSchedule(xpnet.CosineLR(opt, 2, per_step=True))])
    trainer.save(tmp / "ck.npz")


CLI_CASES = [
    # (id, script, argv ({tmp} replaced), setup, exit code, words in the one error line)
    ("cli-seed-negative", "mnist_mlp", ["--seed", "-1"], None, 2,
     ("--seed", "integer >= 0", "got -1")),
    ("cli-lr-inf", "mnist_mlp", ["--lr", "inf"], None, 2,
     ("--lr", "finite number >= 0", "got inf")),
    ("cli-lr-text", "mnist_cnn", ["--lr", "fast"], None, 2,
     ("--lr", "finite number >= 0", "'fast'")),
    ("cli-epochs-zero", "mnist_mlp", ["--epochs", "0"], None, 2,
     ("--epochs", "positive integer", "got 0")),
    ("cli-plot-extension", "mnist_cnn", ["--plot", "{tmp}/out.jpgg"], None, 2,
     ("--plot", "{tmp}/out.jpgg", ".jpgg", "expected one of .png")),
    ("cli-data-dir-missing", "mnist_mlp", ["--data-dir", "{tmp}/nope"], None, 2,
     ("--data-dir", "{tmp}/nope", "does not exist", "expected the folder")),
    ("cli-data-dir-empty", "mnist_cnn", ["--data-dir", "{tmp}/empty"],
     lambda t: (t / "empty").mkdir(), 1,
     ("--data-dir {tmp}/empty holds no complete mnist set", "{tmp}/empty has none of them",
      "omit --data-dir")),
    ("cli-checkpoint-exists", "mnist_mlp", ["--checkpoint", "{tmp}/ck.npz"], _mlp_checkpoint,
     2, ("--checkpoint", "{tmp}/ck.npz", "already exists", "--resume", "--overwrite")),
    ("cli-resume-missing", "mnist_mlp", ["--checkpoint", "{tmp}/gone.npz", "--resume"], None,
     2, ("--resume", "{tmp}/gone.npz", "does not exist", "without --resume")),
    ("cli-resume-and-overwrite", "mnist_cnn",
     ["--checkpoint", "{tmp}/ck.npz", "--resume", "--overwrite"], _mlp_checkpoint, 2,
     ("--resume and --overwrite", "exclude each other")),
    ("cli-checkpoint-is-folder", "mnist_mlp", ["--checkpoint", "{tmp}"], None, 2,
     ("--checkpoint", "{tmp} is a folder", "expected a file path")),
    ("cli-spiral-reg-nan", "spiral", ["--reg", "nan"], None, 2,
     ("--reg", "finite number >= 0", "got nan")),
    ("cli-moons-noise-negative", "moons", ["--noise", "-1"], None, 2,
     ("--noise", "finite number >= 0", "got -1")),
    ("cli-resume-other-architecture", "mnist_mlp",
     ["--checkpoint", "{tmp}/ck.npz", "--resume", "--hidden", "50", "--train-limit", "200",
      "--epochs", "2"], _mlp_checkpoint, 1,
     ("{tmp}/ck.npz", "parameter '0.W'", "(784, 100)", "(784, 50)")),
    ("cli-resume-not-a-checkpoint", "mnist_mlp",
     ["--checkpoint", "{tmp}/ck.npz", "--resume", "--train-limit", "200"],
     lambda t: (t / "ck.npz").write_text("hello"), 1,
     ("{tmp}/ck.npz", "not a zip/.npz file", "expected an .npz checkpoint")),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, tmp_path, monkeypatch, capsys):
    """One line ``examples/<script>.py: error: ...`` on stderr, no traceback, exit 2 for a
    usage error and 1 for a run-time one, and no file written or changed."""
    _, script, argv, setup, code, words = case
    if code == 1 and not (MNIST_DIR / "mnist").is_dir() and not MNIST_DIR.is_dir():
        pytest.skip("real MNIST not available")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if setup is not None:
        setup(tmp_path)
    files_before = _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if script.startswith("mnist") and "--data-dir" not in argv:
        argv += ["--data-dir", str(MNIST_DIR)]
    main = _example_main(script, monkeypatch)
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"examples/{script}.py: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word.replace("{tmp}", str(tmp_path)) in lines[0], (word, lines[0])
    assert _files(tmp_path) == files_before


@pytest.mark.parametrize("make", [
    lambda rng: xpnet.Linear(2, 4, rng=rng),
    lambda rng: xpnet.Conv2d(2, 4, 3, rng=rng),
    lambda rng: xpnet.ConvMaxPool2d(1, 2, 3, rng=rng),
    lambda rng: xpnet.Dropout(0.5, rng=rng),
], ids=["Linear", "Conv2d", "ConvMaxPool2d", "Dropout"])
@pytest.mark.parametrize("rng", [np.random.default_rng(0), np.random.RandomState(0), 7],
                         ids=["numpy-Generator", "RandomState", "seed"])
def test_a_layer_refuses_an_rng_that_is_not_an_xpnet_generator(make, rng):
    """A NumPy generator's normal(shape, std) reads the shape as the mean: without the check
    Conv2d(2, 4, 3, rng=np.random.default_rng(0)) built a W of shape (4,)."""
    with pytest.raises(TypeError, match=r"rng must be an xpnet\.Generator"):
        make(rng)


def test_init_array_refuses_a_numpy_generator():
    from xpnet.init import init_array
    with pytest.raises(TypeError, match=r"init: rng must be an xpnet\.Generator"):
        init_array("he", np.random.default_rng(0), (4, 2, 3, 3), 18, 36)
