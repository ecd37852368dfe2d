"""Checkpoints: one backend-neutral ``.npz`` file, written atomically and verified.

Arrays (model parameters and buffers, optimizer state) are stored as NumPy arrays under
``model/<name>`` and ``optim/<param>/<slot>``; everything else (counters, RNG states, schedule,
history) is one JSON string under ``meta``. The file loads with ``allow_pickle=False`` on any
backend: a checkpoint saved on CuPy resumes on NumPy and the other way round. The arrays handed to
:func:`save_checkpoint` may be host (NumPy) or device arrays of any backend: each is copied to the
host once (:func:`xpnet.backend.as_host`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from .. import validate
from ..backend import as_host

__all__ = ["META_SCHEMA", "Checkpoint", "CheckpointBudgetError", "CheckpointCorruptError",
           "CheckpointError", "CheckpointMemberError", "CheckpointMetaError",
           "CheckpointNotFoundError", "ResumeMismatchError", "check_meta",
           "clean_stale_temp_files", "default_max_bytes", "load_checkpoint",
           "read_checkpoint_meta", "save_checkpoint"]

FORMAT = "xpnet-checkpoint-2"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt or of another format; the message names it."""


class ResumeMismatchError(CheckpointError):
    """A checkpoint does not fit the run resuming from it (model, optimizer, schedule, batch
    size or learning rate differ); the message names the file and the differing setting."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (a CheckpointError and a FileNotFoundError)."""

    __str__ = ValueError.__str__  # the message as given, not OSError's "[Errno ...]" form


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is truncated or its compressed data is corrupt."""


class CheckpointMemberError(CheckpointError):
    """A zip member of a checkpoint is refused before it is inflated: an unexpected name, a
    compression other than stored or deflate, encryption, a size or ``.npy`` header that
    differs from what the metadata (and the model) announce, or a non-numeric dtype."""


class CheckpointBudgetError(CheckpointMemberError):
    """The arrays a checkpoint announces exceed what the reader allows: what the model needs
    (with ``model=``) or ``max_bytes`` (see :func:`load_checkpoint`); refused before any array
    is inflated."""


class CheckpointMetaError(CheckpointError):
    """A metadata field of a checkpoint has the wrong type or range (see :data:`META_SCHEMA`)."""


# ------------------------------------------------------------------ the metadata schema
def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_rate(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and v >= 0


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


def _is_records(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(r, dict) and all(isinstance(k, str) and (_is_number(x) or x is None)
                                    for k, x in r.items()) for r in v)


DTYPE = re.compile(r"^[<>|=]?(f[248]|[iu][1248]|b1)$")


def _is_spec(name: Any, spec: Any) -> bool:
    if not (isinstance(name, str) and MEMBER.match(f"{name}.npy") and name != "meta"
            and isinstance(spec, dict) and set(spec) == {"dtype", "shape"}
            and isinstance(spec["dtype"], str) and DTYPE.match(spec["dtype"])
            and isinstance(spec["shape"], list) and len(spec["shape"]) <= 32
            and all(_is_int(d) and d < 1 << 48 for d in spec["shape"])):
        return False
    kind = np.dtype(spec["dtype"]).kind
    if name == STEPS:
        return spec["dtype"] in ("<f8", "=f8") and len(spec["shape"]) == 2
    return kind == "f" if name.startswith("optim/") else True


def _is_arrays(v: Any) -> bool:
    return isinstance(v, dict) and all(_is_spec(k, s) for k, s in v.items())


def _is_optimizer(v: Any) -> bool:
    """Those of an optimizer's fields that are present are of their kind (which must be
    present is the optimizer's own ``check_state_dict``'s business)."""
    kinds: dict[str, Callable[[Any], bool]] = {
        "class": lambda x: isinstance(x, str), "settings": lambda x: isinstance(x, dict),
        "t": _is_int, "lr": _is_rate, "groups": lambda x: isinstance(x, list)}
    return isinstance(v, dict) and "state" not in v and all(
        ok(v[k]) for k, ok in kinds.items() if k in v)


def _is_history(v: Any) -> bool:
    if not isinstance(v, dict) or set(v) != {"records", "steps"} \
            or not _is_records(v["records"]):
        return False
    cols = v["steps"].get("columns") if isinstance(v["steps"], dict) else None
    return (isinstance(cols, list) and 0 < len(cols) <= 16 and all(
        isinstance(c, list) and len(c) == 2 and isinstance(c[0], str)
        and c[1] in ("int", "float") for c in cols)
        and len({c[0] for c in cols}) == len(cols))


def _is_generators(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(g, dict)
                                       for k, g in v.items())


#: Every metadata field xpnet reads: (what it must be, its check). Fields not listed are the
#: caller's own (``save_checkpoint(meta=...)``) and are returned as read.
META_SCHEMA: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "format": ("a string", lambda v: isinstance(v, str)),
    "arrays": ("a dict naming each array member with its 'dtype' (a float, int or bool "
               "dtype; floats for optimizer slots) and 'shape' (a list of ints >= 0)",
               _is_arrays),
    "optimizer": ("the optimizer's settings (a dict: class a string, settings a dict, t an "
                  "int >= 0, lr a finite number >= 0, groups a list)", _is_optimizer),
    "optimizer_params": ("a list of parameter names", _is_names),
    "epoch": ("an int >= 0", _is_int),
    "step": ("an int >= 0", _is_int),
    "rng": ("a Generator state (a dict)", lambda v: isinstance(v, dict)),
    "layer_rngs": ("a dict of Generator states keyed by layer path", _is_generators),
    "history": ("{'records': a list of records (names to numbers), 'steps': {'columns': "
                "[[name, 'int' or 'float'], ...]}}", _is_history),
    "backend": ("a backend name (a string)", lambda v: isinstance(v, str)),
    "base_lr": ("a finite number >= 0", _is_rate),
    "batch_size": ("an int >= 1", lambda v: _is_int(v, 1)),
    "accumulate": ("an int >= 1", lambda v: _is_int(v, 1)),
    "train_size": ("an int >= 0 or None", lambda v: v is None or _is_int(v)),
    "threads": ("an int >= 1 or None (the thread count the run trained with)",
                lambda v: v is None or _is_int(v, 1)),
    "callbacks": ("a dict of callback states keyed by name",
                  lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)),
}


def check_meta(meta: dict[str, Any], path: str | os.PathLike[str] = "<meta>") -> None:
    """Raise :class:`CheckpointMetaError` naming ``path`` and the field unless every field of
    ``meta`` (as stored in the file) fits :data:`META_SCHEMA`; changes nothing."""
    def refuse(name: str, expected: str) -> None:
        got = repr(meta.get(name, "<missing>"))
        got = got if len(got) <= 80 else got[:77] + "..."
        raise CheckpointMetaError(f"checkpoint {path}: meta field {name!r} must be "
                                  f"{expected}, got {got}")

    for name in ("format", "arrays"):
        if name not in meta:
            refuse(name, META_SCHEMA[name][0])
    for name, (expected, ok) in META_SCHEMA.items():
        if name in meta and not ok(meta[name]):
            refuse(name, expected)
    if ("optimizer" in meta) != ("optimizer_params" in meta):
        refuse("optimizer_params", "present exactly when 'optimizer' is")
    if "history" in meta:
        ncols = len(meta["history"]["steps"]["columns"])
        spec = meta["arrays"].get(STEPS)
        if spec is None or spec["shape"][1] != ncols:
            refuse("history", f"announced with a {STEPS!r} array of {ncols} columns")
    elif STEPS in meta["arrays"]:
        refuse("history", f"present when a {STEPS!r} array is announced")


# Temp files of a writer: ".<name>.pid<PID>.<random>.tmp" beside the target. A writer killed
# mid-write leaves one; the next save in that folder removes those whose process is gone.


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


def _is_history_state(history: Any) -> bool:
    """Whether ``history`` is a History.state_dict(): records, and per-step records that all
    hold numbers for the same fields (anything else is written as given, and refused by
    :func:`check_meta` when read)."""
    if not (isinstance(history, dict) and set(history) == {"records", "steps"}
            and _is_records(history["records"]) and _is_records(history["steps"])):
        return False
    steps = history["steps"]
    return all(list(r) == list(steps[0]) and None not in r.values() for r in steps) \
        and len(steps[0] if steps else ()) <= 16


def _pack_history(history: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """The Trainer's history for the file: per-epoch records stay JSON; the per-step records,
    the one part that grows with every step, become one float64 row each (an int column
    stays exact to 2**53), their field names and kinds listed under ``steps.columns``."""
    steps = history["steps"]
    names = list(steps[0]) if steps else ["step", "epoch", "loss", "lr"]
    kinds = ["int" if steps and all(_is_int(r[n], -(1 << 53)) for r in steps) else "float"
             for n in names]
    table = np.array([[r[n] for n in names] for r in steps], dtype=np.float64)
    packed = {"records": history["records"],
              "steps": {"columns": [[n, k] for n, k in zip(names, kinds)]}}
    return packed, table.reshape(len(steps), len(names))


def _unpack_history(path: Path, meta: dict[str, Any], table: np.ndarray | None) -> None:
    """Restore ``meta['history']['steps']`` as a list of records from its float64 table."""
    if "history" not in meta or table is None:
        return
    cols = meta["history"]["steps"]["columns"]
    cast = [int if kind == "int" else float for _, kind in cols]
    if any(kind == "int" and not np.all(np.isfinite(table[:, j]) & (table[:, j] % 1 == 0))
           for j, (_, kind) in enumerate(cols)):
        raise CheckpointMetaError(f"checkpoint {path}: meta field 'history' announces an int "
                                  f"column of {STEPS!r} that holds non-integers")
    meta["history"]["steps"] = [{n: c(v) for (n, _), c, v in zip(cols, cast, row)}
                                for row in table.tolist()]


def save_checkpoint(path: str | os.PathLike[str], model_state: dict[str, np.ndarray],
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
    if _is_history_state(meta.get("history")):
        meta["history"], arrays[STEPS] = _pack_history(meta["history"])
    meta["arrays"] = {k: {"dtype": v.dtype.str, "shape": list(v.shape)}
                      for k, v in arrays.items()}
    try:
        text = json.dumps(meta, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"checkpoint {path}: meta must hold JSON values (numbers, strings, "
                        f"lists, dicts); {exc}") from None
    arrays["meta"] = np.frombuffer(text.encode("utf-8"), np.uint8)
    with _naming_the_path(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            cast(Any, np.savez)(f, **arrays)  # arrays' names are not savez's options
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


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Errors of a damaged zip or deflate stream as one CheckpointCorruptError naming ``path``
    (a CheckpointError passes as it is)."""
    try:
        yield
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as exc:
        raise CheckpointCorruptError(f"checkpoint {path} is truncated or corrupt ({exc}); "
                                     f"expected {EXPECTED}") from exc


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a checkpoint, validated against :data:`META_SCHEMA`, without reading
    any array: only the zip's directory and the ``meta`` member (at most :data:`META_MAX`
    bytes) are read, so memory stays bounded whatever the file announces.

    For callers that need a setting, not the weights (the saved ``base_lr``, ``epoch``, the
    announced ``arrays`` and their shapes). The per-step history is an array, so
    ``meta["history"]["steps"]`` holds only its column list here. Refusals are the
    :class:`CheckpointError` subclasses :func:`load_checkpoint` raises.
    """
    path = Path(path)
    _check_file(path)
    with _reading(path), zipfile.ZipFile(path) as zf:
        infos = _directory(path, zf)
        meta = _read_meta(path, zf, infos.pop("meta", None))
        _announced(path, meta, infos)
    return meta


#: what a model-less :func:`load_checkpoint` may inflate: this many times the file's size ...
BUDGET_FILE_FACTOR = 4
#: ... plus this many bytes (see :func:`default_max_bytes`)
BUDGET_ALLOWANCE = 64 << 20


def default_max_bytes(path: str | os.PathLike[str]) -> int:
    """The arrays' total a model-less :func:`load_checkpoint` of ``path`` allows:
    ``4 x the file's size + 64 MiB``.

    A stored member (what :func:`save_checkpoint` writes) costs exactly its size in the file,
    so every file xpnet writes fits within 1x. A deflated one (``np.savez_compressed``) of
    trained weights shrinks little; the factor 4 leaves room for zero-filled optimizer slots
    (two per parameter for Adam) and the allowance for any small model. A deflate bomb, at
    up to 1032x, is refused: memory stays within a few times what the file occupies on disk.
    """
    return BUDGET_FILE_FACTOR * Path(path).stat().st_size + BUDGET_ALLOWANCE


def load_checkpoint(path: str | os.PathLike[str], *, model: Any = None,
                    max_bytes: int | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, treating the file as untrusted.

    The zip's directory is read first and each array's ``.npy`` header before its data: a
    member the metadata does not announce, a compression other than stored or deflate, an
    encrypted member, a size or header that differs from the announcement, or a dtype that
    is not a plain number is refused before anything is inflated. Every metadata field is
    checked against :data:`META_SCHEMA`. No pickle is ever loaded.

    Memory is bounded by what the caller knows, never by what the file claims. With
    ``model`` (a :class:`~xpnet.Module`), the arrays together may not exceed what that model
    and one float64 slot per announced optimizer slot need. Without one, they may not exceed
    ``max_bytes`` (default :func:`default_max_bytes`: 4 x the file's size + 64 MiB); a
    ``max_bytes`` given with a model applies as well. A file over its budget raises
    :class:`CheckpointBudgetError` before any array is inflated. Every refusal is a
    :class:`CheckpointError` naming the file and field. To read only the settings, use
    :func:`read_checkpoint_meta`.
    """
    path = Path(path)
    if max_bytes is not None:
        max_bytes = validate.positive_int("load_checkpoint", "max_bytes", max_bytes)
    _check_file(path)
    with _reading(path), zipfile.ZipFile(path) as zf:
        infos = _directory(path, zf)
        meta = _read_meta(path, zf, infos.pop("meta", None))
        announced = _announced(path, meta, infos)
        if model is not None:
            _check_budget(path, announced, meta, model)
        if max_bytes is not None or model is None:
            _check_max_bytes(path, announced, max_bytes)
        files = {k: _read_array(path, zf, infos[k], spec) for k, spec in announced.items()}
    _unpack_history(path, meta, files.pop(STEPS, None))
    model_state = {k[len("model/"):]: v for k, v in files.items() if k.startswith("model/")}
    optim = None
    if "optimizer" in meta:
        state: dict[str, dict[str, np.ndarray]] = {n: {} for n in meta["optimizer_params"]}
        for k, v in files.items():
            if k.startswith("optim/"):
                pname, slot = k[len("optim/"):].rsplit("/", 1)
                state.setdefault(pname, {})[slot] = v
        optim = dict(meta["optimizer"], state=state)
    return Checkpoint(model=model_state, optimizer=optim, meta=meta)


EXPECTED = "an .npz checkpoint written by xpnet (Trainer.save or save_checkpoint)"
STEPS = "history/steps"  # the per-step history: one float64 row per optimizer step
META_MAX = 64 << 20  # bytes of JSON metadata read at most
STEPS_MAX_ROWS = 1 << 22  # per-step history rows read at most
# the per-step history becomes Python records, so it may inflate at most this many times its
# stored bytes, plus the allowance (xpnet stores it as is: 1x; deflate takes a real history
# to about 3-6x)
STEPS_FILE_FACTOR = 8
STEPS_ALLOWANCE = 4 << 20
HEADER_SLACK = 4096  # bytes an .npy header may take (NumPy writes 128)
DEFLATE_RATIO = 1032  # deflate's largest inflation ratio
MEMBER = re.compile(r"^(meta|history/steps|model/[^/\x00-\x1f]+|optim/[^\x00-\x1f]+/[^/\x00-\x1f]+)"
                    r"\.npy$")


def _check_file(path: Path) -> None:
    """CheckpointError naming ``path`` unless it is a file that starts like a zip."""
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


def _directory(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The zip's members by array name, each checked from the directory alone: its name,
    compression, encryption flag and the plausibility of its declared sizes."""
    size = path.stat().st_size
    if "meta.npy" not in zf.namelist():
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry, so it is not an xpnet "
                              f"checkpoint; expected {EXPECTED}")
    out: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        m = MEMBER.match(info.filename)
        if m is None:
            raise CheckpointMemberError(f"checkpoint {path}: unexpected member "
                                        f"{info.filename!r}; expected meta.npy, model/<name>.npy"
                                        f", optim/<param>/<slot>.npy or {STEPS}.npy")
        name = m.group(1)
        where = f"checkpoint {path}: member {info.filename!r}"
        if name in out:
            raise CheckpointMemberError(f"{where} appears twice; expected each once")
        if info.flag_bits & 0x1:
            raise CheckpointMemberError(f"{where} is encrypted; expected a plain member")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointMemberError(f"{where} uses compression method "
                                        f"{info.compress_type}; expected stored (0) or "
                                        "deflate (8)")
        ratio = 1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_RATIO
        if info.compress_size > size or info.file_size > ratio * info.compress_size + 1024:
            raise CheckpointMemberError(
                f"{where} declares {info.file_size} bytes from {info.compress_size} "
                f"compressed in a {size}-byte file; expected sizes the file can hold")
        out[name] = info
    return out


def _read_meta(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo | None
               ) -> dict[str, Any]:
    """The JSON metadata (UTF-8 bytes; a NumPy str scalar is also read), size-capped, checked
    for xpnet's format tag and against :data:`META_SCHEMA`."""
    if info is None:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry; expected {EXPECTED}")
    if info.file_size > META_MAX + HEADER_SLACK:
        raise CheckpointMemberError(f"checkpoint {path}: member 'meta.npy' declares "
                                    f"{info.file_size} bytes; expected at most {META_MAX}")
    with zf.open(info) as f:
        shape, fortran, dtype = _header(path, "meta", f)
        if dtype == np.uint8 and len(shape) == 1:
            raw = _read_exact(path, "meta", f, shape[0])
        elif dtype.kind == "U" and shape == () and dtype.itemsize <= META_MAX:
            raw = np.frombuffer(_read_exact(path, "meta", f, dtype.itemsize), dtype)[0]
            raw = bytearray(str(raw).encode("utf-8", "surrogatepass"))
        else:
            raise CheckpointError(f"checkpoint {path}: its 'meta' entry is a {dtype} array of "
                                  f"shape {shape}; expected one JSON string ({EXPECTED})")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, an endless number
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is not valid JSON ({exc}); "
                              f"expected {EXPECTED}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is a JSON "
                              f"{type(meta).__name__}; expected an object ({EXPECTED})")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; "
                              f"expected {FORMAT!r}")
    check_meta(meta, path)
    return meta


def _announced(path: Path, meta: dict[str, Any], infos: dict[str, zipfile.ZipInfo]
               ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The arrays the metadata announces, matched one to one with the zip's members, each
    member's declared size equal to its announced array plus at most a header."""
    announced = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in meta["arrays"].items()}
    extra, missing = sorted(set(infos) - set(announced)), sorted(set(announced) - set(infos))
    if extra or missing:
        raise CheckpointMemberError(
            f"checkpoint {path}: members {extra} are not announced by its metadata" if extra
            else f"checkpoint {path}: members {missing} announced by its metadata are missing")
    for k, (shape, dtype) in announced.items():
        nbytes = math.prod(shape) * dtype.itemsize
        if not nbytes <= infos[k].file_size <= nbytes + HEADER_SLACK:
            raise CheckpointMemberError(
                f"checkpoint {path}: member {k!r} declares {infos[k].file_size} bytes; its "
                f"announced {dtype} array of shape {shape} takes {nbytes} plus a header")
    if STEPS in announced and announced[STEPS][0][0] > STEPS_MAX_ROWS:
        raise CheckpointMemberError(f"checkpoint {path}: member {STEPS!r} announces "
                                    f"{announced[STEPS][0][0]} rows; expected at most "
                                    f"{STEPS_MAX_ROWS}")
    if STEPS in announced:  # read into Python records (~10x its bytes): bounded by the file
        shape, info = announced[STEPS][0], infos[STEPS]
        cap = STEPS_FILE_FACTOR * info.compress_size + STEPS_ALLOWANCE
        if math.prod(shape) * 8 > cap:
            raise CheckpointBudgetError(
                f"checkpoint {path}: member {STEPS!r} announces {shape[0]} rows "
                f"({math.prod(shape) * 8} bytes) from {info.compress_size} stored bytes; a "
                f"per-step history is read up to {STEPS_FILE_FACTOR}x its stored size + "
                f"{STEPS_ALLOWANCE} bytes (xpnet stores it uncompressed)")
    return announced


def _check_budget(path: Path, announced: dict[str, tuple[tuple[int, ...], np.dtype]],
                  meta: dict[str, Any], model: Any) -> None:
    """Refuse arrays that together exceed what ``model`` needs: its state at 8 bytes per
    number, one such copy per announced optimizer slot of its parameters, the history."""
    state = {k: math.prod(v.shape) for k, v in model.state_dict().items()}
    params = {k: math.prod(p.shape) for k, p in model.parameters().items()}
    budget = 8 * sum(state.values())
    total = 0
    for k, (shape, dtype) in announced.items():
        if k.startswith("optim/"):
            budget += 8 * params.get(k[len("optim/"):].rsplit("/", 1)[0], 0)
        elif k == STEPS:
            budget += 8 * math.prod(shape)  # bounded by STEPS_MAX_ROWS and its column count
        total += math.prod(shape) * dtype.itemsize
    if total > budget:
        raise CheckpointBudgetError(
            f"checkpoint {path}: its arrays announce {total} bytes; this model "
            f"({sum(state.values())} numbers) and its optimizer slots need at most {budget}")


def _check_max_bytes(path: Path, announced: dict[str, tuple[tuple[int, ...], np.dtype]],
                     max_bytes: int | None) -> None:
    """Refuse arrays that together announce more than ``max_bytes`` (default: the file's)."""
    budget = default_max_bytes(path) if max_bytes is None else max_bytes
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in announced.values())
    if total > budget:
        how = (f"the default for a file of its size, {BUDGET_FILE_FACTOR} x its bytes + "
               f"{BUDGET_ALLOWANCE >> 20} MiB" if max_bytes is None
               else "max_bytes")
        raise CheckpointBudgetError(
            f"checkpoint {path}: its arrays announce {total} bytes, over the budget of "
            f"{budget} ({how}); to read it, pass the model it belongs to "
            f"(load_checkpoint(path, model=model)) or a larger max_bytes, or read only its "
            f"settings with read_checkpoint_meta(path)")


def _header(path: Path, name: str, f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An ``.npy`` header read from the stream ``f`` (bounded), its fields checked."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=HEADER_SLACK)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=HEADER_SLACK)
        else:
            raise ValueError(f"npy format version {version}")
    except (ValueError, SyntaxError, TypeError, KeyError, EOFError) as exc:
        raise CheckpointMemberError(f"checkpoint {path}: member {name!r} has no valid .npy "
                                    f"header ({exc}); expected {EXPECTED}") from None
    if dtype.hasobject:
        raise CheckpointMemberError(f"checkpoint {path} holds pickled Python objects, which "
                                    f"xpnet never loads (member {name!r}); expected {EXPECTED}")
    if fortran:
        raise CheckpointMemberError(f"checkpoint {path}: member {name!r} is in Fortran order; "
                                    "expected C order, as save_checkpoint writes")
    return shape, fortran, dtype


def _read_exact(path: Path, name: str, f: Any, nbytes: int) -> bytearray:
    """Exactly ``nbytes`` from the member stream ``f``, then its end: anything short or
    trailing is refused; nothing beyond ``nbytes`` + 1 is ever inflated."""
    buf, pos = bytearray(nbytes), 0
    view = memoryview(buf)
    while pos < nbytes:
        chunk = f.read(min(nbytes - pos, 1 << 20))
        if not chunk:
            raise CheckpointCorruptError(f"checkpoint {path}: member {name!r} ends after "
                                         f"{pos} of {nbytes} bytes; the file is truncated "
                                         "or corrupt")
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    if f.read(1):
        raise CheckpointMemberError(f"checkpoint {path}: member {name!r} holds bytes after "
                                    f"its {nbytes}-byte array; expected nothing more")
    return buf


def _read_array(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                spec: tuple[tuple[int, ...], np.dtype]) -> np.ndarray:
    """One announced array: its header checked against the announcement, then its data."""
    name = info.filename[:-len(".npy")]
    with zf.open(info) as f:
        shape, _, dtype = _header(path, name, f)
        if (shape, dtype) != spec:
            raise CheckpointMemberError(
                f"checkpoint {path}: member {name!r} holds a {dtype} array of shape {shape}; "
                f"its metadata announces {spec[1]} of shape {spec[0]}")
        data = _read_exact(path, name, f, math.prod(shape) * dtype.itemsize)
    return np.frombuffer(data, dtype).reshape(shape)


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

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> Literal[False]:
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


def clean_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files left in the folder of ``path`` by checkpoint writers that were killed
    (``kill -9``, power loss), whichever checkpoint they were writing.

    Only names of our own pattern are touched: ``.<name>.pid<PID>.<x>.tmp`` whose process no
    longer exists (on this machine). A live writer's file is never removed.
    Returns the removed paths.
    """
    path = Path(path)
    pattern = re.compile(r"^\..+\.pid(\d+)\.[A-Za-z0-9_]+\.tmp$")
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
