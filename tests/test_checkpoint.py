"""Checkpoints (xpnet/io/checkpoint.py): atomic writes, verification, cross-backend loading."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import use_backend

import xpnet
from xpnet.io import checkpoint
from xpnet.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xpnet.models import SimpleConvNet, TwoLayerNet


def test_round_trip_without_pickle(tmp_path):
    model = TwoLayerNet(4, 3, 2)
    opt = xpnet.Adam(model)
    for p in model.parameters().values():
        p.grad = xpnet.to_device(np.ones(p.shape, dtype=np.float32))
    opt.step()
    path = save_checkpoint(tmp_path / "a.npz", model.state_dict(), opt.state_dict(),
                           {"epoch": 3})
    with np.load(path, allow_pickle=False) as data:  # nothing pickled inside
        assert "meta" in data.files
    ck = load_checkpoint(path)
    assert ck.meta["epoch"] == 3 and ck.optimizer["t"] == 1
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(ck.model[k], v)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, {"w": np.zeros(3)})
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": np.ones(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temp file left


def test_truncated_or_foreign_files_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "ck.npz", {"w": np.arange(1000.0)})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="ck.npz.*truncated or corrupt"):
        load_checkpoint(path)
    other = tmp_path / "other.npz"
    np.savez(other, w=np.zeros(2))
    with pytest.raises(CheckpointError, match="other.npz.*not an xpnet checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")


def test_saved_on_torch_loads_on_numpy(tmp_path):
    pytest.importorskip("torch")
    with use_backend("torch"):
        model = SimpleConvNet(seed=3)
        save_checkpoint(tmp_path / "t.npz", model.state_dict())
        expected = model.state_dict()
    with use_backend("numpy"):
        other = SimpleConvNet(seed=4)
        other.load_state_dict(load_checkpoint(tmp_path / "t.npz").model)
        for k, v in other.state_dict().items():
            np.testing.assert_array_equal(v, expected[k])
            assert isinstance(other.parameters()[k].data if k in other.parameters()
                              else other.buffers()[k], np.ndarray)


def test_shape_mismatch_names_the_parameter(tmp_path):
    save_checkpoint(tmp_path / "m.npz", TwoLayerNet(784, 50, 10).state_dict())
    with pytest.raises(ValueError, match=r"parameter '0.W'.*\(784, 50\).*\(784, 100\)"):
        TwoLayerNet(784, 100, 10).load_state_dict(load_checkpoint(tmp_path / "m.npz").model)


# ---------------------------------------------------------------------- hardening (issue 11)
def test_nan_and_inf_states_save_and_verify(tmp_path):
    """A diverged state must be savable for inspection: verification is NaN-aware."""
    w = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    path = save_checkpoint(tmp_path / "d.npz", {"w": w}, meta={"loss": float("nan")})
    ck = load_checkpoint(path)
    np.testing.assert_array_equal(ck.model["w"], w)  # assert_array_equal treats NaN == NaN
    assert ck.model["w"].dtype == np.float32 and np.isnan(ck.meta["loss"])


def test_verification_still_catches_a_changed_nan_array(tmp_path, monkeypatch):
    real = checkpoint.np.savez

    def corrupting(f, **arrays):
        arrays = dict(arrays, **{"model/w": np.array([np.nan, 2.0])})
        real(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", corrupting)
    with pytest.raises(CheckpointError, match="verification failed for 'model/w'"):
        save_checkpoint(tmp_path / "v.npz", {"w": np.array([np.nan, 1.0])})
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_writers_are_cleaned(tmp_path):
    import os
    import subprocess
    import sys
    import time
    target = tmp_path / "ck.npz"
    dead = tmp_path / f".ck.npz.pid{_dead_pid()}.abc123.tmp"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".ck.npz.pid{live_proc.pid}.xyz789.tmp"
        pidless = tmp_path / ".ck.npz.k3j4h5g6.tmp"  # not a writer's name: never touched
        other_target = tmp_path / f".other.npz.pid{_dead_pid()}.abc.tmp"
        unrelated = tmp_path / "notes.tmp"
        for p in (dead, live, pidless, other_target, unrelated):
            p.write_bytes(b"x" * 100)
        hour_ago = time.time() - 7200
        os.utime(pidless, (hour_ago, hour_ago))
        save_checkpoint(target, {"w": np.zeros(2)})
        left = sorted(p.name for p in tmp_path.iterdir())
        # a dead writer's file is swept whichever checkpoint of the folder it was writing
        assert left == sorted(["ck.npz", live.name, pidless.name, unrelated.name])
        assert not other_target.exists()
    finally:
        live_proc.kill()
        live_proc.wait()


def test_a_killed_writer_leaves_a_temp_file_the_next_save_removes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    code = ("import os, sys, numpy as np; sys.path.insert(0, sys.argv[2]);"
            "from xpnet.io import checkpoint as c;"
            "c._verify = lambda *a: os._exit(9);"  # die after writing, before the rename
            "c.save_checkpoint(sys.argv[1], {'w': np.zeros(1000)})")
    root = str(Path(checkpoint.__file__).resolve().parents[1])
    rc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ck.npz"), root]).returncode
    assert rc == 9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.npz.pid")
    save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


@pytest.mark.parametrize("err", [28, 13], ids=["disk-full", "permission"])
def test_write_errors_name_the_path(tmp_path, monkeypatch, err):
    import errno
    import os
    path = tmp_path / "ck.npz"

    def failing(f, **arrays):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(checkpoint.np, "savez", failing)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {"w": np.ones(3)})
    assert info.value.errno == err and str(path) in str(info.value)
    assert os.strerror(err) in str(info.value)
    if err == errno.EACCES:
        assert isinstance(info.value, PermissionError)
    assert list(tmp_path.iterdir()) == []


def test_saving_to_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="directory") as info:
        save_checkpoint(tmp_path, {"w": np.ones(3)})
    assert str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_both_checkpoint_and_file_not_found_error(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.npz")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "nope.npz") in str(info.value) and "expected" in str(info.value)
