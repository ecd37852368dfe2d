"""Checkpoints (xpnet/checkpoint.py): atomic writes, verification, cross-backend loading."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import use_backend

import xpnet
from xpnet import checkpoint
from xpnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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
