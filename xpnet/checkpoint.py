"""Checkpoints: one backend-neutral ``.npz`` file, written atomically and verified.

Arrays (model parameters and buffers, optimizer state) are stored as NumPy arrays under
``model/<name>`` and ``optim/<param>/<slot>``; everything else (counters, RNG states, schedule,
history) is one JSON string under ``meta``. The file loads with ``allow_pickle=False`` on any
backend: a checkpoint saved on CuPy resumes on NumPy and the other way round. The arrays handed to
:func:`save_checkpoint` may be host (NumPy) or device arrays of any backend: each is copied to the
host once (:func:`xpnet.backend.as_host`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backend import as_host

__all__ = ["Checkpoint", "CheckpointError", "CheckpointNotFoundError", "ResumeMismatchError",
           "clean_stale_temp_files", "load_checkpoint", "save_checkpoint"]

FORMAT = "xpnet-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt or of another format; the message names it."""


class ResumeMismatchError(CheckpointError):
    """A checkpoint does not fit the run resuming from it (model, optimizer, schedule, batch
    size or learning rate differ); the message names the file and the differing setting."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (a CheckpointError and a FileNotFoundError)."""

    __str__ = ValueError.__str__  # the message as given, not OSError's "[Errno ...]" form


# Temp files of a writer: ".<name>.pid<PID>.<random>.tmp" beside the target. A writer killed
# mid-write leaves one; the next save removes those whose process is gone.


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
    _check_save_args(model_state, optim_state, meta)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot write a checkpoint: the path is a "
                                "directory; expected a file path such as run.npz", str(path))
    meta = dict(meta or {})
    meta["format"] = FORMAT
    if optim_state is not None:
        meta["optimizer"] = {k: v for k, v in optim_state.items() if k != "state"}
        meta["optimizer_params"] = sorted(optim_state["state"])
    arrays = _flatten(model_state, optim_state)
    try:
        arrays["meta"] = np.array(json.dumps(meta, allow_nan=True))
    except TypeError as exc:
        raise TypeError(f"checkpoint {path}: meta must hold JSON values (numbers, strings, "
                        f"lists, dicts); {exc}") from None
    with _naming_the_path(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise _with_path(exc, path) from exc  # disk full, permission: name the file
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
            # NaN-aware for floats: a diverged state must be savable for inspection
            nan_ok = np.issubdtype(v.dtype, np.inexact)
            if not np.array_equal(data[k], v, equal_nan=nan_ok):
                raise CheckpointError(f"{path}: verification failed for {k!r} after writing")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle is ever loaded)."""
    path = Path(path)
    files = _read_npz(path)
    meta = _read_meta(path, files.pop("meta", None))
    model = {k[len("model/"):]: v for k, v in files.items() if k.startswith("model/")}
    optim = None
    if "optimizer" in meta:
        if not isinstance(meta["optimizer"], dict) \
                or not isinstance(meta.get("optimizer_params"), list):
            raise CheckpointError(f"checkpoint {path}: its optimizer entry is malformed; "
                                  "expected the settings dict and parameter list that "
                                  "save_checkpoint writes")
        state: dict[str, dict[str, np.ndarray]] = {n: {} for n in meta["optimizer_params"]}
        for k, v in files.items():
            if k.startswith("optim/"):
                pname, slot = k[len("optim/"):].rsplit("/", 1)
                state.setdefault(pname, {})[slot] = v
        optim = dict(meta["optimizer"], state=state)
    return Checkpoint(model=model, optimizer=optim, meta=meta)



EXPECTED = "an .npz checkpoint written by xpnet (Trainer.save or save_checkpoint)"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file at ``path``; CheckpointError naming it for anything else."""
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist; expected {EXPECTED}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected {EXPECTED}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise _with_path(exc, path) from exc
    if head == b"\x93NUMPY":
        raise CheckpointError(f"checkpoint {path} is a single NumPy array (.npy); "
                              f"expected {EXPECTED}")
    if not head.startswith(b"PK"):
        what = "an empty file" if not head else "not a zip/.npz file"
        raise CheckpointError(f"checkpoint {path} is {what}; expected {EXPECTED}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which "
                                  f"xpnet never loads; expected {EXPECTED}") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc}); "
                              f"expected {EXPECTED}") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc}); "
                              f"expected {EXPECTED}") from exc


def _read_meta(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    """The JSON metadata entry, checked for xpnet's format tag."""
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry, so it is not an xpnet "
                              f"checkpoint; expected {EXPECTED}")
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is a {raw.dtype} array of "
                              f"shape {raw.shape}; expected one JSON string ({EXPECTED})")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is not valid JSON ({exc}); "
                              f"expected {EXPECTED}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is a JSON "
                              f"{type(meta).__name__}; expected an object ({EXPECTED})")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; "
                              f"expected {FORMAT!r}")
    return meta


def _with_path(exc: OSError, path: Path) -> OSError:
    """The same kind of OSError (PermissionError, disk full...) with the checkpoint path."""
    new = type(exc)(exc.errno, f"cannot write checkpoint ({exc.strerror})", str(path))
    return new


class _naming_the_path:
    """Context manager: an OSError without a file name gets ``path`` as its file name."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise _with_path(exc, self.path) from exc
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True  # cannot tell: keep the file
    return True


def clean_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove temp files left beside ``path`` by checkpoint writers that were killed.

    Only names of our own pattern for this target are touched: ``.<name>.pid<PID>.<x>.tmp``
    whose process no longer exists (on this machine). A live writer's file is never removed.
    Returns the removed paths.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.pid(\d+)\.[A-Za-z0-9_]+\.tmp$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _pid_alive(pid) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another cleaner got there first, or no permission: harmless
    return removed


def _check_save_args(model_state: Any, optim_state: Any, meta: Any) -> None:
    """Arguments of the wrong kind, refused before anything is written."""
    if not isinstance(model_state, dict):
        raise TypeError(f"save_checkpoint: model_state must be a dict of arrays (from "
                        f"model.state_dict()), got {type(model_state).__name__}")
    if optim_state is not None and not (isinstance(optim_state, dict)
                                        and isinstance(optim_state.get("state"), dict)):
        raise TypeError(f"save_checkpoint: optim_state must be None or an optimizer's "
                        f"state_dict() (a dict with a 'state' dict), got "
                        f"{type(optim_state).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"save_checkpoint: meta must be None or a dict, got "
                        f"{type(meta).__name__}")
