"""Model weights in the safetensors format: no pickle, header first, read with bounds.

A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the raw little-endian bytes (https://huggingface.co/docs/safetensors). It
loads in PyTorch (``safetensors.torch.load_file``), Hugging Face and Keras tools, and here.

Names and layouts. With ``layout="xpnet"`` (the default) the tensors are the model's
:meth:`~xpnet.Module.state_dict`: dotted module paths and xpnet's names and layouts
(``0.W`` of a :class:`~xpnet.Linear` is (in, out); a convolution's ``W`` is (out, in, kh, kw);
``b``; BatchNorm/LayerNorm ``gamma``, ``beta``, ``running_mean``, ``running_var``). With
``layout="torch"`` the same tensors get PyTorch's names and layouts, so a ``torch.nn`` model
whose module paths mirror xpnet's loads the file with ``load_state_dict``:

============================  =====================================================
xpnet                         torch.nn
============================  =====================================================
Linear ``W`` (in, out)        Linear ``weight`` (out, in): transposed
Linear / conv ``b``           ``bias``
Conv2d ``W`` (out, in, k, k)  Conv2d ``weight`` (out, in, k, k): the same layout
BatchNorm/LayerNorm ``gamma``  ``weight``; ``beta``: ``bias``; running statistics keep their names
============================  =====================================================

:func:`load_weights` reads either layout (a ``layout`` metadata entry, else the names decide),
drops torch's ``num_batches_tracked`` counters, and also accepts a training checkpoint (.npz).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..module import Module

__all__ = ["MAX_HEADER_BYTES", "WeightsError", "decode", "encode", "load_weights", "read_weights",
           "save_weights"]

FORMAT = "xpnet-weights-1"
#: the longest JSON header read (safetensors' own limit): a larger claim is refused unread
MAX_HEADER_BYTES = 100_000_000

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1", "BOOL": "?"}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_TORCH_NAMES = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
_LAYOUTS = ("xpnet", "torch")
EXPECTED = ("a safetensors file written by xpnet.save_weights (or any safetensors file), or an "
            ".npz checkpoint written by xpnet's Trainer")


class WeightsError(ValueError):
    """A weights file is malformed, or does not fit the model; the message names the file and
    the tensor."""


def _check_model(model: Any, fn: str) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"{fn}: model must be an xpnet Module (the model the weights belong "
                        f"to), got {type(model).__name__}")


def _torch_map(model: Module) -> dict[str, tuple[str, bool]]:
    """xpnet state-dict name -> (torch name, transposed?) for every parameter and buffer."""
    import xpnet  # the layer classes, through their public names

    out: dict[str, tuple[str, bool]] = {}
    for path, m in model.modules().items():
        prefix = f"{path}." if path else ""
        for n in m._param_names:
            if getattr(m, n) is not None:
                out[prefix + n] = (prefix + _TORCH_NAMES.get(n, n),
                                   isinstance(m, xpnet.Linear) and n == "W")
        for n in m._buffer_names:
            out[prefix + n] = (prefix + n, False)
    return out


def save_weights(model: Module, path: str | os.PathLike[str], *, layout: str = "xpnet",
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s parameters and buffers to a safetensors file, atomically.

    ``layout`` is 'xpnet' (xpnet's names and layouts) or 'torch' (PyTorch's: see the module
    docstring). ``metadata`` adds string entries to the header; xpnet writes ``format``,
    ``layout`` and ``model`` (the class name, which ``python -m xpnet export`` reads).
    Returns the path.
    """
    _check_model(model, "save_weights")
    if layout not in _LAYOUTS:
        raise ValueError(f"save_weights: layout must be one of {_LAYOUTS}, got {layout!r}")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError("save_weights: metadata must be a dict of str to str (the safetensors "
                        f"header holds strings), got {metadata!r}")
    state = model.state_dict()
    if layout == "torch":
        names = _torch_map(model)
        state = {names[k][0]: (v.T if names[k][1] else v) for k, v in state.items()}
    blob = encode(state, {**(metadata or {}), "format": FORMAT, "layout": layout,
                          "model": type(model).__name__})
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"save_weights: {path} is a directory; expected a file path "
                                "such as model.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def encode(state: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of named NumPy arrays (in the dict's order) and a metadata dict."""
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in state.items():
        arr = np.ascontiguousarray(arr)
        code = _CODES.get(arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">"
                          else arr.dtype)
        if code is None:
            raise TypeError(f"save_weights: tensor {name!r} has dtype {arr.dtype}, which "
                            f"safetensors cannot hold here; expected one of {sorted(_CODES)}")
        data = arr.astype(_DTYPES[code], copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (NumPy, native byte order) and header metadata of a safetensors file.

    The header is read first and checked before any data: its length (at most
    :data:`MAX_HEADER_BYTES` and within the file), its JSON, each tensor's dtype, shape and
    byte range (inside the file, of the size its shape needs, not overlapping another).
    Raises WeightsError naming the file and the tensor; FileNotFoundError for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"weights file {path} {what}; expected {EXPECTED}")
    with open(path, "rb") as f:
        return decode(f, path.stat().st_size, f"weights file {path}")


def decode(f: BinaryIO, size: int, where: str
           ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read safetensors from the stream ``f`` of ``size`` bytes (see :func:`read_weights`);
    ``where`` names it in errors ('weights file x.safetensors')."""
    head = f.read(8)
    if len(head) < 8:
        raise WeightsError(f"{where} is {size} bytes, too short for a safetensors header; "
                           f"expected {EXPECTED}")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise WeightsError(f"{where} claims a {n}-byte header (it has {size} bytes, the "
                           f"limit is {MAX_HEADER_BYTES}); it is not a safetensors file or "
                           "is truncated")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{where}: its header is not JSON ({exc}); expected "
                           f"{EXPECTED}") from None
    entries = _check_header(where, header, size - 8 - n)
    buffer = f.read()
    meta = header.get("__metadata__") or {}
    arrays = {}
    for name, (dtype, shape, (begin, _)) in entries.items():
        arr = np.frombuffer(buffer, dtype=dtype, count=math.prod(shape), offset=begin)
        arrays[name] = arr.reshape(shape).astype(np.dtype(dtype).newbyteorder("="))
    return arrays, meta

def _check_header(where: str, header: Any, data_bytes: int
                  ) -> dict[str, tuple[str, list[int], tuple[int, int]]]:
    """Validate every header entry; return name -> (NumPy dtype, shape, byte range)."""
    if not isinstance(header, dict):
        raise WeightsError(f"{where}: its header is a JSON "
                           f"{type(header).__name__}; expected an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsError(f"{where}: __metadata__ must map strings to strings")
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        what = f"{where}: tensor {name!r}"
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise WeightsError(f"{what}: expected an entry with dtype, shape and data_offsets, "
                               f"got {e!r}")
        if e["dtype"] not in _DTYPES:
            raise WeightsError(f"{what} has dtype {e['dtype']!r}; expected one of "
                               f"{sorted(_DTYPES)}")
        shape, offs = e["shape"], e["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise WeightsError(f"{what} has shape {shape!r}; expected a list of sizes")
        if not (isinstance(offs, list) and len(offs) == 2
                and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1] <= data_bytes):
            raise WeightsError(f"{what} has data_offsets {offs!r}; expected [begin, end] "
                               f"within the file's {data_bytes} data bytes")
        dtype = _DTYPES[e["dtype"]]
        if offs[1] - offs[0] != math.prod(shape) * np.dtype(dtype).itemsize:
            raise WeightsError(f"{what}: {offs[1] - offs[0]} bytes do not hold shape "
                               f"{tuple(shape)} of {e['dtype']}")
        out[name] = (dtype, shape, (offs[0], offs[1]))
    ranges = sorted((b, e, n) for n, (_, _, (b, e)) in out.items() if e > b)
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise WeightsError(f"{where}: tensors {first!r} and {second!r} "
                               "overlap; the file is corrupt")
    return out


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a file that starts as a zip (an .npz training checkpoint)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _read_any(path: Path, model: Module | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A safetensors file's tensors and metadata, or a checkpoint's model state (read within
    ``model``'s budget when given, see :func:`~xpnet.io.checkpoint.load_checkpoint`)."""
    if is_checkpoint(path):
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, model=model).model, {"layout": "xpnet"}
    return read_weights(path)


def _to_xpnet_names(model: Module, state: dict[str, np.ndarray], layout: str | None
                    ) -> dict[str, np.ndarray]:
    """``state`` with xpnet's names and layouts (converted from torch's where it has those)."""
    mine = model.state_dict()
    if layout == "xpnet" or (layout is None and set(state) == set(mine)):
        return state
    names = _torch_map(model)
    back = {torch_name: (k, t) for k, (torch_name, t) in names.items()}
    if layout != "torch" and not set(state) <= set(back) | {
            k for k in state if k.endswith(".num_batches_tracked")}:
        return state  # neither layout fits: load_state_dict names the differences
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked") and k not in back:
            continue  # torch's BatchNorm step counter: xpnet has none
        name, transposed = back.get(k, (k, False))
        out[name] = v.T if transposed and v.ndim == 2 else v
    return out


def load_weights(model: Module, path: str | os.PathLike[str]) -> Module:
    """Load the weights in ``path`` into ``model`` (built with the same architecture) and
    return it.

    ``path`` is a safetensors file (xpnet's or torch's layout, see the module docstring) or
    a training checkpoint (.npz). Every tensor must be present with the model's shape and
    dtype: the first mismatch is a WeightsError naming the parameter, raised before anything
    is loaded. The arrays land on the current backend.
    """
    _check_model(model, "load_weights")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_weights: path must be a file path (str or Path), got "
                        f"{type(path).__name__}; for a dict of arrays use "
                        "model.load_state_dict(state)")
    path = Path(path)
    raw, meta = _read_any(path, model)
    state = _to_xpnet_names(model, raw, meta.get("layout"))
    for k, want in model.state_dict().items():
        got = state.get(k)
        if got is not None and got.shape == want.shape and got.dtype != want.dtype:
            raise WeightsError(f"weights file {path}: parameter {k!r} is {got.dtype}; the "
                               f"model's is {want.dtype} (build the model with that dtype, or "
                               f"model.to_dtype('{got.dtype}'))")
    try:  # names and shapes: checked there, before anything is loaded
        model.load_state_dict(state)
    except ValueError as exc:
        raise WeightsError(f"weights file {path} does not fit {type(model).__name__}: "
                           f"{exc}") from None
    return model
