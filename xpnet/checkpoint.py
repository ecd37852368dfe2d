"""Checkpoints: one backend-neutral ``.npz`` file, written atomically and verified.

Arrays (model parameters and buffers, optimizer state) are stored as NumPy arrays under
``model/<name>`` and ``optim/<param>/<slot>``; everything else (counters, RNG states, schedule,
history) is one JSON string under ``meta``. The file loads with ``allow_pickle=False`` on any
backend: a checkpoint saved on CuPy resumes on NumPy and the other way round. The arrays handed to
:func:`save_checkpoint` may be host (NumPy) or device arrays of any backend: each is copied to the
host once (:func:`xpnet.backend.as_host`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backend import as_host

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "xpnet-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of another format."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _flatten(model_state: dict[str, np.ndarray],
             optim_state: dict[str, Any] | None) -> dict[str, np.ndarray]:
    arrays = {f"model/{k}": as_host(v, f"model state {k!r}") for k, v in model_state.items()}
    if optim_state is not None:
        for pname, slots in optim_state["state"].items():
            for slot, v in slots.items():
                arrays[f"optim/{pname}/{slot}"] = as_host(v, f"optimizer state {pname}/{slot}")
    return arrays


def save_checkpoint(path: str | os.PathLike, model_state: dict[str, np.ndarray],
                    optim_state: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically: temp file in the same folder, fsync, verify, rename.

    A crash at any point leaves either the old file or the new one, never a partial file.
    Arrays may be NumPy arrays or device arrays of any backend (CuPy, torch CUDA,
    array_api_strict on any device); they are brought to the host with
    :func:`xpnet.backend.as_host`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta["format"] = FORMAT
    if optim_state is not None:
        meta["optimizer"] = {k: v for k, v in optim_state.items() if k != "state"}
        meta["optimizer_params"] = sorted(optim_state["state"])
    arrays = _flatten(model_state, optim_state)
    arrays["meta"] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        _verify(Path(tmp), arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _verify(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Re-read a freshly written file and compare every array with what was meant."""
    with np.load(path, allow_pickle=False) as data:
        if sorted(data.files) != sorted(arrays):
            raise CheckpointError(f"{path}: verification failed, keys differ after writing")
        for k, v in arrays.items():
            if not np.array_equal(data[k], v):
                raise CheckpointError(f"{path}: verification failed for {k!r} after writing")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle is ever loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from exc
    if "meta" not in files:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry; not an xpnet checkpoint")
    meta = json.loads(str(files.pop("meta")))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; "
                              f"expected {FORMAT!r}")
    model = {k[len("model/"):]: v for k, v in files.items() if k.startswith("model/")}
    optim = None
    if "optimizer" in meta:
        state: dict[str, dict[str, np.ndarray]] = {n: {} for n in meta["optimizer_params"]}
        for k, v in files.items():
            if k.startswith("optim/"):
                pname, slot = k[len("optim/"):].rsplit("/", 1)
                state.setdefault(pname, {})[slot] = v
        optim = dict(meta["optimizer"], state=state)
    return Checkpoint(model=model, optimizer=optim, meta=meta)

