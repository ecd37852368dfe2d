"""A checkpoint is untrusted input (xpnet/io/checkpoint.py): the zip directory and each
``.npy`` header are checked before anything is inflated, the metadata against one schema
before anything changes; crafted files are refused with a CheckpointError naming file and
field, in bounded memory; the per-step history is stored compactly; killed writers' temp
files are swept."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpnet
import xpnet.train
from xpnet.io.checkpoint import (
    CheckpointBudgetError,
    CheckpointError,
    CheckpointMemberError,
    CheckpointMetaError,
    default_max_bytes,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from xpnet.models import TwoLayerNet

ROOT = str(Path(__file__).resolve().parents[1])
GiB = 1 << 30


def _trainer(seed: int = 0, batch_size: int = 5) -> xpnet.train.Trainer:
    model = TwoLayerNet(4, 3, 2, seed=seed)
    opt = xpnet.Adam(model, lr=0.01)
    return xpnet.train.Trainer(model, opt, batch_size=batch_size, seed=seed,
                               callbacks=[xpnet.train.LRSchedule(xpnet.StepLR(opt, 1, 0.5))])


def _data(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 2, n)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A Trainer checkpoint after one epoch (4 optimizer steps)."""
    t = _trainer()
    t.fit(*_data(), 1)
    return t.save(tmp_path / "run.npz")


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _meta(path: Path) -> dict:
    return json.loads(np.load(io.BytesIO(_members(path)["meta.npy"])).tobytes())


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def _meta_npy(meta: dict) -> bytes:
    return _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))


def _rewrite(src: Path, dst: Path, *, meta: dict | None = None,
             members: dict[str, bytes] | None = None,
             compression: int = zipfile.ZIP_STORED) -> Path:
    """``src`` with its meta and/or some members replaced, written to ``dst``."""
    out = _members(src)
    if meta is not None:
        out["meta.npy"] = _meta_npy(meta)
    out.update(members or {})
    with zipfile.ZipFile(dst, "w", compression) as zf:
        for name, data in out.items():
            zf.writestr(name, data)
    return dst


def _patch_directory(path: Path, *, method: int | None = None, flags: int | None = None) -> None:
    """Set every member's compression method and/or general-purpose flags in both the local
    headers and the central directory, as a crafted file would."""
    data = bytearray(path.read_bytes())
    for sig, m_off, f_off in ((b"PK\x03\x04", 8, 6), (b"PK\x01\x02", 10, 8)):
        at = data.find(sig)
        while at != -1:
            if method is not None:
                data[at + m_off:at + m_off + 2] = struct.pack("<H", method)
            if flags is not None:
                data[at + f_off:at + f_off + 2] = struct.pack("<H", flags)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


def _snapshot(t: xpnet.train.Trainer) -> dict:
    """Every array and counter of model, optimizer, schedule and trainer."""
    return {"model": {k: np.array(v) for k, v in t.model.state_dict().items()},
            "optim": copy.deepcopy({k: v for k, v in t.optimizer.state_dict().items()}),
            "lr": t.optimizer.lr, "state": copy.deepcopy(t.state.state_dict(t.model)),
            "callbacks": copy.deepcopy({c.key: c.state_dict() for c in t.callbacks if c.key})}


def _assert_same(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k])
    sa, sb = a["optim"].pop("state"), b["optim"].pop("state")
    assert a["optim"] == b["optim"] and sa.keys() == sb.keys()
    for p in sa:
        for slot in sa[p]:
            np.testing.assert_array_equal(sa[p][slot], sb[p][slot])
    assert (a["lr"], a["state"], a["callbacks"]) == (b["lr"], b["state"], b["callbacks"])


def _resume_refused(path: Path, kind: type[Exception], *fragments: str) -> None:
    """Resuming a trained trainer from ``path`` raises ``kind`` naming the file and each
    fragment, and leaves model, optimizer, schedule and trainer exactly as they were."""
    t = _trainer(seed=1)
    t.fit(*_data(), 2)
    before = _snapshot(t)
    with pytest.raises(kind) as info:
        t.resume(path)
    for text in (str(path), *fragments):
        assert text in str(info.value)
    _assert_same(before, _snapshot(t))


# ---------------------------------------------------------------- the zip directory
def test_unknown_compression_method_is_refused_by_name(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "c.npz")
    _patch_directory(path, method=99)
    with pytest.raises(CheckpointMemberError, match="compression method 99"):
        load_checkpoint(path)
    _resume_refused(path, CheckpointMemberError, "compression method 99", "expected stored")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compressions_other_than_stored_or_deflate_are_refused(saved, tmp_path, method):
    path = _rewrite(saved, tmp_path / "c.npz", compression=method)
    with pytest.raises(CheckpointMemberError, match=f"compression method {method}"):
        load_checkpoint(path)


def test_deflate_is_read(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "d.npz", compression=zipfile.ZIP_DEFLATED)
    ck = load_checkpoint(path)
    for k, v in load_checkpoint(saved).model.items():
        np.testing.assert_array_equal(ck.model[k], v)


def test_encrypted_flag_is_refused(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "e.npz")
    _patch_directory(path, flags=0x1)
    with pytest.raises(CheckpointMemberError, match="is encrypted"):
        load_checkpoint(path)
    _resume_refused(path, CheckpointMemberError, "encrypted")


def test_unexpected_and_missing_members_are_refused(saved, tmp_path):
    extra = _rewrite(saved, tmp_path / "x.npz", members={"model/extra.npy": _npy(np.ones(2))})
    with pytest.raises(CheckpointMemberError, match=r"\['model/extra'\] are not announced"):
        load_checkpoint(extra)
    odd = _rewrite(saved, tmp_path / "o.npz", members={"../evil.npy": _npy(np.ones(2))})
    with pytest.raises(CheckpointMemberError, match="unexpected member '../evil.npy'"):
        load_checkpoint(odd)
    meta = _meta(saved)
    meta["arrays"]["model/ghost"] = {"dtype": "<f4", "shape": [2]}
    missing = _rewrite(saved, tmp_path / "m.npz", meta=meta)
    with pytest.raises(CheckpointMemberError, match=r"\['model/ghost'\] announced .* missing"):
        load_checkpoint(missing)


# ---------------------------------------------------------------- headers before data
def test_a_header_declaring_terabytes_is_refused_before_reading(saved, tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    member = header.getvalue() + b"\0" * 48  # the size the announced (4, 3) float32 takes
    path = _rewrite(saved, tmp_path / "h.npz", members={"model/0.W.npy": member})
    with pytest.raises(CheckpointMemberError, match=r"'model/0.W' holds a float64 array of "
                                                    r"shape \(1000000000000,\)"):
        load_checkpoint(path)
    _resume_refused(path, CheckpointMemberError, "model/0.W", "announces")


@pytest.mark.parametrize("dtype", ["<c8", "<U3", "|S4"])
def test_non_float_optimizer_slots_are_refused(saved, tmp_path, dtype):
    name = next(k for k in _meta(saved)["arrays"] if k.startswith("optim/"))
    value = np.zeros((4, 3), dtype=dtype)
    # the header says so though the metadata announces floats: refused by the header
    header_only = _rewrite(saved, tmp_path / "a.npz", members={f"{name}.npy": _npy(value)})
    with pytest.raises(CheckpointMemberError, match=name):
        load_checkpoint(header_only)
    # the metadata says so too: refused by the schema, before any member is read
    meta = _meta(saved)
    meta["arrays"][name] = {"dtype": np.dtype(dtype).str, "shape": [4, 3]}
    both = _rewrite(saved, tmp_path / "b.npz", meta=meta, members={f"{name}.npy": _npy(value)})
    with pytest.raises(CheckpointMetaError, match="meta field 'arrays'"):
        load_checkpoint(both)
    _resume_refused(both, CheckpointMetaError, "'arrays'")


def test_fortran_order_and_trailing_bytes_are_refused(saved, tmp_path):
    name = "model/0.W"
    w = load_checkpoint(saved).model["0.W"]
    fortran = _rewrite(saved, tmp_path / "f.npz",
                       members={f"{name}.npy": _npy(np.asfortranarray(w))})
    with pytest.raises(CheckpointMemberError, match="Fortran order"):
        load_checkpoint(fortran)
    trailing = _rewrite(saved, tmp_path / "t.npz", members={f"{name}.npy": _npy(w) + b"\0" * 8})
    with pytest.raises(CheckpointMemberError, match="bytes after"):
        load_checkpoint(trailing)


# ---------------------------------------------------------------- bombs, bounded memory
def _deflate_member(saved: Path, dst: Path, meta: dict, member: str, nbytes: int) -> Path:
    """``saved`` with ``meta`` and its ``member`` replaced by ``nbytes`` of float32 zeros,
    deflated (about 1 MB per GiB)."""
    out = _members(saved)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", _meta_npy(meta))
        for name, data in out.items():
            if name not in ("meta.npy", member):
                zf.writestr(name, data)
        with zf.open(member, "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = bytes(16 << 20)
            for _ in range(nbytes // len(zeros)):
                f.write(zeros)
    assert dst.stat().st_size < 2 << 20
    return dst


def _deflate_bomb(saved: Path, dst: Path, *, announce: bool) -> Path:
    """``saved`` with model/0.W replaced by 1 GiB of float32 zeros, deflated to about 1 MB;
    ``announce``: the metadata announces that array too (else it keeps the (4, 3) shape)."""
    meta = _meta(saved)
    if announce:
        meta["arrays"]["model/0.W"] = {"dtype": "<f4", "shape": [GiB // 4]}
    return _deflate_member(saved, dst, meta, "model/0.W.npy", GiB)


def _history_bomb(saved: Path, dst: Path, rows: int = 1 << 21) -> Path:
    """``saved`` with a per-step history of ``rows`` identical rows (64 MiB for 2**21),
    deflated to about 170 kB: within the schema's row limit, the model's budget left out."""
    meta = _meta(saved)
    meta["arrays"]["history/steps"] = {"dtype": "<f8", "shape": [rows, 4]}
    out = _members(saved)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (rows, 4)})
    block = np.tile([1.0, 1.0, 0.5, 0.01], (1 << 16, 1)).tobytes()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", _meta_npy(meta))
        for name, data in out.items():
            if name not in ("meta.npy", "history/steps.npy"):
                zf.writestr(name, data)
        with zf.open("history/steps.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(rows >> 16):
                f.write(block)
    assert dst.stat().st_size < 1 << 20
    return dst


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    t = _trainer()
    t.fit(*_data(), 1)
    base = t.save(d / "run.npz")
    return {"plain": _deflate_bomb(base, d / "plain.npz", announce=False),
            "announced": _deflate_bomb(base, d / "announced.npz", announce=True),
            "history": _history_bomb(base, d / "history.npz")}


def test_a_history_bomb_is_refused_by_its_stored_size_even_with_a_model(bombs):
    """The model bounds its arrays, not the per-step history, which becomes Python records:
    that is bounded by the bytes the file stores for it."""
    stored = zipfile.ZipFile(bombs["history"]).getinfo("history/steps.npy").compress_size
    _resume_refused(bombs["history"], CheckpointBudgetError, "'history/steps' announces "
                    f"2097152 rows (67108864 bytes) from {stored} stored bytes",
                    "8x its stored size + 4194304 bytes")


def test_a_long_deflated_history_still_loads(tmp_path):
    """200,000 steps (6.4 MB as a table; deflate takes it to about 3x less) load."""
    rng = np.random.default_rng(0)
    n = 200_000
    steps = [{"step": i + 1, "epoch": i // 600 + 1, "loss": float(v), "lr": 1e-3}
             for i, v in enumerate(2.3 * np.exp(-np.arange(n) / 2e4) + 0.1 * rng.random(n))]
    src = save_checkpoint(tmp_path / "h.npz", {"0.W": np.ones((2, 2), np.float32)},
                          meta={"history": {"records": [], "steps": steps}})
    path = _rewrite(src, tmp_path / "hz.npz", compression=zipfile.ZIP_DEFLATED)
    stored = zipfile.ZipFile(path).getinfo("history/steps.npy").compress_size
    assert 8 * stored + (4 << 20) > n * 32 > 4 << 20 and n * 32 > 2 * stored
    assert load_checkpoint(path).meta["history"]["steps"] == steps


def test_a_deflate_bomb_is_refused_from_the_directory(bombs):
    with pytest.raises(CheckpointMemberError, match=r"'model/0.W' declares 1073741952 bytes"):
        load_checkpoint(bombs["plain"])


def test_an_announced_bomb_is_refused_by_the_models_budget(bombs):
    _resume_refused(bombs["announced"], CheckpointMemberError, "arrays announce",
                    "this model")


def test_an_announced_bomb_is_refused_without_a_model_by_the_files_budget(bombs):
    path = bombs["announced"]
    announced = sum(np.prod(s["shape"]) * np.dtype(s["dtype"]).itemsize
                    for s in _meta(path)["arrays"].values())
    budget = 4 * path.stat().st_size + (64 << 20)
    assert default_max_bytes(path) == budget < 80 << 20 and announced > GiB
    with pytest.raises(CheckpointBudgetError) as info:
        load_checkpoint(path)
    for text in (str(path), f"announce {announced} bytes", f"budget of {budget}", "model=model",
                 "max_bytes", "read_checkpoint_meta"):
        assert text in str(info.value)
    with pytest.raises(CheckpointBudgetError, match=r"budget of 1000 \(max_bytes\)"):
        load_checkpoint(path, max_bytes=1000)


def test_the_metadata_alone_is_read_from_a_bomb(bombs):
    meta = read_checkpoint_meta(bombs["announced"])
    assert meta["arrays"]["model/0.W"]["shape"] == [GiB // 4]
    assert meta["base_lr"] == 0.01 and meta["epoch"] == 1
    assert meta["history"]["steps"] == {"columns": [["step", "int"], ["epoch", "int"],
                                                    ["loss", "float"], ["lr", "float"]]}


def test_read_checkpoint_meta_refuses_what_load_checkpoint_refuses(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "c.npz")
    _patch_directory(path, flags=0x1)
    with pytest.raises(CheckpointMemberError, match="encrypted"):
        read_checkpoint_meta(path)
    with pytest.raises(CheckpointMetaError, match="'epoch'"):
        read_checkpoint_meta(_rewrite(saved, tmp_path / "e.npz",
                                      meta={**_meta(saved), "epoch": -1}))
    assert read_checkpoint_meta(saved) == _meta(saved)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_checkpoints_xpnet_and_savez_compressed_write_load_without_a_model(tmp_path,
                                                                           compression):
    """Within the default budget: what save_checkpoint writes (stored), the same deflated, a
    np.savez_compressed file of a 30 MB model with zero-filled Adam slots, the Trainer's."""
    rng = np.random.default_rng(0)
    state = {"0.W": rng.standard_normal((2500, 1000)).astype(np.float32),
             "0.b": np.zeros(1000, np.float32)}
    slots = {"0.W": {"m": np.zeros((2500, 1000), np.float32),
                     "v": np.zeros((2500, 1000), np.float32)}}
    src = save_checkpoint(tmp_path / "a.npz", state, {"class": "Adam", "state": slots})
    path = _rewrite(src, tmp_path / "b.npz", compression=compression)
    assert path.stat().st_size < (13 << 20 if compression == zipfile.ZIP_DEFLATED else 1 << 40)
    ck = load_checkpoint(path)
    np.testing.assert_array_equal(ck.model["0.W"], state["0.W"])
    np.testing.assert_array_equal(ck.optimizer["state"]["0.W"]["v"], slots["0.W"]["v"])
    members = {k: v for k, v in _members(path).items()}
    npz = tmp_path / "c.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as zf:  # np.savez_compressed's form
        for name, data in members.items():
            zf.writestr(name, data)
    assert load_checkpoint(npz).model.keys() == state.keys()


def test_max_bytes_is_checked_and_bounds_a_model_load_as_well(saved):
    with pytest.raises(xpnet.validate.ArgumentTypeError, match="max_bytes"):
        load_checkpoint(saved, max_bytes="1e9")
    with pytest.raises(ValueError, match="max_bytes"):
        load_checkpoint(saved, max_bytes=0)
    with pytest.raises(CheckpointBudgetError, match="max_bytes"):
        load_checkpoint(saved, model=TwoLayerNet(4, 3, 2), max_bytes=8)
    assert load_checkpoint(saved, model=TwoLayerNet(4, 3, 2), max_bytes=1 << 20).model


RSS_PROBE = """
import argparse, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/examples")
import numpy as np
import xpnet
import xpnet.train
from xpnet.io.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
from xpnet.models import TwoLayerNet
import common
def status(field):  # this process's own figures (getrusage's ru_maxrss survives exec: it
    # would start at the peak of the forked test process, and could hide any growth)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
model = TwoLayerNet(4, 3, 2)
opt = xpnet.Adam(model, lr=0.01)
trainer = xpnet.train.Trainer(model, opt, batch_size=5,
                              callbacks=[xpnet.train.LRSchedule(xpnet.StepLR(opt, 1, 0.5))])
base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far := now
except OSError:
    pass  # then the peak of the imports counts too: stricter, never laxer
try:
    if sys.argv[3] == "load":
        load_checkpoint(sys.argv[2])
    elif sys.argv[3] == "meta":
        read_checkpoint_meta(sys.argv[2])
    elif sys.argv[3] == "saved_lr":
        args = argparse.Namespace(resume=True, explicit=set(), checkpoint=sys.argv[2], lr=1.0)
        common.use_saved_lr(args)
        assert args.lr == 0.01, args.lr
    else:
        trainer.resume(sys.argv[2])
except CheckpointError:
    pass
print((status("VmHWM") - base) // 1024)
"""


# without a model, a file is read within a few times its size (its arrays within
# 4 x the file + 64 MiB, or its metadata alone); with one (Trainer.resume), the model's
# budget bounds it; the per-step history, either way, 8 x its stored bytes + 4 MiB
@pytest.mark.parametrize(("bomb", "how"), [("plain", "load"), ("plain", "resume"),
                                           ("announced", "resume"), ("announced", "load"),
                                           ("announced", "meta"), ("announced", "saved_lr"),
                                           ("history", "resume"), ("history", "load")])
def test_loading_a_bomb_stays_within_a_fixed_memory_cap(bombs, bomb, how):
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status to read the peak memory from")
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, ROOT, str(bombs[bomb]), how],
                         capture_output=True, text=True, timeout=300, check=True)
    grew_mib = int(out.stdout.split()[-1])
    assert grew_mib < 200, f"loading a 2 MB file grew the process by {grew_mib} MiB"


def test_the_export_cli_builds_the_model_before_reading_arrays(bombs, tmp_path):
    out = subprocess.run([sys.executable, "-m", "xpnet", "export", str(bombs["announced"]),
                          "--model", "TwoLayerNet", "--safetensors", str(tmp_path / "w.st")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, lines
    assert "cannot rebuild TwoLayerNet" in lines[0] and "[268435456]" in lines[0]


def test_the_export_cli_reads_a_checkpoint_within_its_models_budget(bombs, tmp_path):
    src = bombs["announced"].parent / "run.npz"
    meta = _meta(src)
    meta["arrays"]["model/2.b"] = {"dtype": "<f4", "shape": [GiB // 4]}  # the model: (4,3,2)
    path = _deflate_member(src, tmp_path / "b2.npz", meta, "model/2.b.npy", GiB)
    out = subprocess.run([sys.executable, "-m", "xpnet", "export", str(path), "--model",
                          "TwoLayerNet", "--safetensors", str(tmp_path / "w.st")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1, lines
    assert str(path) in lines[0] and "this model" in lines[0] and "arrays announce" in lines[0]
    out = subprocess.run([sys.executable, "-m", "xpnet", "export", str(src), "--model",
                          "TwoLayerNet", "--safetensors", str(tmp_path / "ok.st")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(xpnet.io.read_weights(tmp_path / "ok.st")[0]["0.W"],
                                  load_checkpoint(src).model["0.W"])


# ---------------------------------------------------------------- the metadata schema
BAD_META = [
    ("epoch", "3"), ("epoch", -1), ("epoch", 2.5), ("epoch", True), ("step", -4),
    ("step", None), ("history", 7), ("history", {"records": [1], "steps": {"columns": []}}),
    ("history", {"records": [{"loss": "x"}], "steps": {"columns": [["loss", "float"]]}}),
    ("base_lr", "0.01"), ("base_lr", float("inf")), ("base_lr", -1.0), ("batch_size", 0),
    ("batch_size", "10"), ("callbacks", []), ("rng", "seed"), ("layer_rngs", [1]),
    ("backend", 3), ("optimizer", {"class": 3}), ("optimizer", {"t": -1}),
    ("optimizer", [1]), ("optimizer_params", "0.W"), ("threads", 0), ("threads", "2"),
    ("threads", 1.5),
    ("arrays", {"model/0.W": {"dtype": "|O", "shape": [4, 3]}}),
    ("arrays", {"model/0.W": {"dtype": "<f4", "shape": [-4, 3]}}),
]


def test_meta_that_is_not_json_is_refused_by_name(saved, tmp_path):
    for i, text in enumerate([b"\xff\xfe", b"{" * 100000, b'{"epoch": ' + b"9" * 5000 + b"}"]):
        path = _rewrite(saved, tmp_path / f"j{i}.npz",
                        members={"meta.npy": _npy(np.frombuffer(text, np.uint8))})
        with pytest.raises(CheckpointError, match="'meta' entry is not valid JSON"):
            load_checkpoint(path)


@pytest.mark.parametrize(("field", "value"), BAD_META,
                         ids=[f"{f}={v!r}" for f, v in BAD_META])
def test_wrong_typed_or_ranged_meta_fields_are_refused_changing_nothing(saved, tmp_path,
                                                                       field, value):
    meta = _meta(saved)
    meta[field] = value
    path = _rewrite(saved, tmp_path / "bad.npz", meta=meta)
    with pytest.raises(CheckpointMetaError, match=f"meta field '{field}' must be"):
        load_checkpoint(path)
    _resume_refused(path, CheckpointMetaError, f"'{field}'")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 20, 10 ** 20)
                    | st.floats(allow_nan=True) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(["epoch", "step", "rng", "layer_rngs", "history",
                                                "backend", "base_lr", "batch_size", "callbacks",
                                                "optimizer", "optimizer_params", "arrays",
                                                "format", "user"]), JSON, min_size=1, max_size=3))
def test_any_meta_either_resumes_or_is_refused_changing_nothing(saved, tmp_path, changes):
    meta = _meta(saved)
    meta.update(changes)
    path = _rewrite(saved, tmp_path / "fuzz.npz", meta=meta)
    t = _trainer(seed=1)
    t.fit(*_data(), 2)
    before = _snapshot(t)
    try:
        t.resume(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
        _assert_same(before, _snapshot(t))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=20), dtype=st.sampled_from(
           ["<f4", "<f8", "<c8", "|O", "<U2", "|S3", "|V4", "<i8", "|b1", "<m8[s]"]),
       shape=st.lists(st.integers(0, 5), max_size=3), method=st.sampled_from([0, 8, 12, 14]),
       announce=st.booleans())
def test_any_crafted_member_loads_or_is_refused_by_name(saved, tmp_path, name, dtype, shape,
                                                       method, announce):
    a = np.zeros(shape, dtype=np.dtype(dtype))
    raw = _npy(a) if a.dtype != object else b"\x93NUMPY\x01\x00v\x00{'descr': '|O', " \
        b"'fortran_order': False, 'shape': (1,), }" + b" " * 64 + b"\n"
    meta = _meta(saved)
    if announce:
        meta["arrays"][name] = {"dtype": np.dtype(dtype).str, "shape": shape}
    path = _rewrite(saved, tmp_path / "member.npz", meta=meta,
                    members={f"{name}.npy": raw}, compression=method)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
    else:
        assert method in (0, 8) and announce and np.dtype(dtype).kind in "fiub"
        assert name.startswith(("model/", "optim/")) and ck is not None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_garbled_files_are_refused_by_name(saved, tmp_path, data):
    if data.draw(st.booleans(), label="deflated"):
        saved = _rewrite(saved, tmp_path / "deflated.npz", compression=zipfile.ZIP_DEFLATED)
    raw = bytearray(saved.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(2, len(raw) - 1), label="length")]
    else:
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8),
                            label="offsets"):
            raw[at] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "garbled.npz"
    path.write_bytes(bytes(raw))
    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)


def test_the_export_cli_prints_one_line_for_a_crafted_checkpoint(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "c.npz")
    _patch_directory(path, flags=0x1)
    out = subprocess.run([sys.executable, "-m", "xpnet", "export", str(path), "--model",
                          "TwoLayerNet", "--safetensors", str(tmp_path / "w.safetensors")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "encrypted" in lines[0]


# ---------------------------------------------------------------- compact history
def test_the_checkpoint_grows_a_few_bytes_per_optimizer_step(tmp_path):
    x, y = _data(200)
    t = _trainer(batch_size=2)  # 100 optimizer steps per epoch
    sizes = []
    for epochs in (1, 3):
        t.fit(x, y, epochs)
        sizes.append(t.save(tmp_path / f"e{epochs}.npz").stat().st_size)
    per_step = (sizes[1] - sizes[0]) / 200
    assert per_step <= 40, f"{per_step:.0f} bytes per optimizer step"


def test_the_per_step_history_round_trips_exactly(saved, tmp_path):
    t = _trainer()
    t.fit(*_data(), 1)
    resumed = _trainer()
    resumed.resume(saved)
    assert resumed.history.steps == t.history.steps and len(t.history.steps) == 4
    assert all(type(s["step"]) is int and type(s["epoch"]) is int for s in t.history.steps)
    timeless = [{k: v for k, v in r.items() if k != "seconds"} for r in t.history.records]
    assert [{k: v for k, v in r.items() if k != "seconds"}
            for r in resumed.history.records] == timeless
    assert "history/steps.npy" in _members(saved)
    assert _meta(saved)["history"]["steps"] == {"columns": [["step", "int"], ["epoch", "int"],
                                                            ["loss", "float"],
                                                            ["lr", "float"]]}


def test_save_checkpoint_meta_is_utf8_json(tmp_path):
    path = save_checkpoint(tmp_path / "u.npz", {"w": np.ones(2)}, meta={"note": "é"})
    raw = np.load(io.BytesIO(_members(path)["meta.npy"]))
    assert raw.dtype == np.uint8 and json.loads(raw.tobytes())["note"] == "é"


# ---------------------------------------------------------------- killed writers
WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from xpnet.io.checkpoint import save_checkpoint
big = {"w": np.ones(8 << 20)}  # 64 MB: each write takes a while
while True:
    save_checkpoint(sys.argv[2], big)
"""


def test_a_writer_killed_by_sigkill_leaves_a_temp_file_the_next_save_sweeps(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, ROOT, str(tmp_path / "a.npz")])
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".a.npz.pid") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".a.npz.pid")]
    assert left, "the killed writer left no temp file"
    # the next successful save in that folder sweeps it, whichever file it writes
    save_checkpoint(tmp_path / "b.npz", {"w": np.ones(2)})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
