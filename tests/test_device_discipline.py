"""Device discipline (issue 10, item 5): with a non-default device selected, every parameter,
gradient, optimizer slot, buffer, batch, RNG draw, temporary and output lands on it, and nothing
on the default device. array_api_strict's device1 stands in for a second GPU: it refuses any mix
with CPU_DEVICE arrays and any conversion to NumPy, as CuPy on cuda:1 would. The cupy case needs
two GPUs (skipped otherwise)."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from conftest import fallback, require_backend, use_backend

import xpnet
from xpnet import info as info_module
from xpnet.data import BatchLoader
from xpnet.io.checkpoint import load_checkpoint, save_checkpoint
from xpnet.train import Trainer


def _cases():
    yield pytest.param("array_api_strict", "device1", id="strict-device1")
    yield pytest.param("array_api_strict", "device2", id="strict-device2")
    yield pytest.param("cupy", "cuda:1", id="cupy-cuda1", marks=pytest.mark.gpu)


def _require(name: str, device: str) -> None:
    require_backend(name)
    if name == "cupy":
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 2:
            pytest.skip(f"{device} needs two CUDA devices, found {count}")


def _model(rng):
    return xpnet.Sequential(
        xpnet.Conv2d(1, 4, 3, padding=1, rng=rng), xpnet.BatchNorm(4), xpnet.ReLU(),
        xpnet.MaxPool2d(2), xpnet.Flatten(), xpnet.Dropout(0.3, rng=rng),
        xpnet.Linear(4 * 4 * 4, 3, rng=rng))


@pytest.mark.parametrize(("name", "device"), list(_cases()))
def test_everything_lands_on_the_selected_device(monkeypatch, tmp_path, name, device):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    _require(name, device)
    with use_backend(name, device) as b:
        want = b.device
        info_module.collect_info()          # must not change the selection or the device
        xpnet.available_backends()
        assert xpnet.current() is b
        rng = xpnet.Generator(0)
        model = _model(rng)
        opt = xpnet.Adam(model, lr=1e-2)
        host = np.random.default_rng(0)
        x = host.standard_normal((20, 1, 8, 8)).astype(np.float32)
        y = host.integers(0, 3, 20)
        trainer = Trainer(model, opt, batch_size=10)
        trainer.fit(x, y, epochs=1)
        arrays = {f"param {k}": p.data for k, p in model.parameters().items()}
        arrays |= {f"grad {k}": p.grad for k, p in model.parameters().items()
                   if p.grad is not None}
        arrays |= {f"buffer {k}": v for k, v in model.buffers().items()}
        arrays |= {f"slot {k}/{s}": v for k, slots in opt.state.items()
                   for s, v in slots.items() if array_api_compat.is_array_api_obj(v)}
        for resident in (False, True):
            xb, yb = next(iter(BatchLoader(x, y, 10, backend=b, resident=resident)))
            arrays[f"batch x resident={resident}"], arrays[f"batch y {resident}"] = xb, yb
        arrays["rng draw"] = rng.uniform((5,))
        if hasattr(b.xp, "float16"):  # CuPy, torch (the standard has no float16)
            arrays["rng draw float16"] = rng.uniform((5,), b.xp.float16)
        out = model(xpnet.to_device(x[:4]))
        arrays["output"] = out
        arrays["to_device of a device array"] = xpnet.to_device(out, dtype="float64")
        misplaced = [k for k, v in arrays.items() if array_api_compat.device(v) != want]
        assert not misplaced, misplaced
        # device arrays accepted where host data is (one rule: xpnet.backend.as_host)
        np.testing.assert_array_equal(xpnet.to_numpy(xpnet.to_device(x)), x)
        path = save_checkpoint(tmp_path / "ck.npz", model.state_dict())
        assert set(load_checkpoint(path).model) == set(model.state_dict())
        loader = BatchLoader(xpnet.to_device(x), xpnet.to_device(y), 10, backend=b)
        assert sum(yb.shape[0] for _, yb in loader) == 20
        if name == "cupy":
            import cupy
            assert cupy.cuda.Device().id == want.id  # info did not switch it back to 0


def test_to_device_moves_between_strict_devices(monkeypatch):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("array_api_strict")
    import array_api_strict as strict

    with use_backend("array_api_strict", "device1"):
        a = xpnet.to_device(np.arange(3.0))
    with use_backend("array_api_strict", "device2") as b:
        moved = xpnet.to_device(a)
        assert moved.device == strict.Device("device2") and moved is not a
        assert b.device == strict.Device("device2")
        np.testing.assert_array_equal(xpnet.to_numpy(moved), np.arange(3.0))


def test_plot_and_checkpoint_accept_device_arrays(monkeypatch, tmp_path):
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("array_api_strict")
    pytest.importorskip("matplotlib")
    from xpnet.plot import decision_boundary

    with use_backend("array_api_strict", "device1") as b:
        x = xpnet.to_device(np.random.default_rng(0).standard_normal((30, 2)), "float32")
        y = xpnet.to_device(np.arange(30) % 2)

        def predict(points):
            return b.xp.astype(xpnet.to_device(points)[:, 0] > 0, b.xp.int64)  # device result

        png = decision_boundary(predict, x, y, tmp_path / "b.png", resolution=20)
        assert png.read_bytes()[:4] == b"\x89PNG"
        path = save_checkpoint(tmp_path / "c.npz", {"w": x},
                               {"state": {"w": {"m": x}}, "lr": 0.1})
        np.testing.assert_array_equal(load_checkpoint(path).model["w"], xpnet.to_numpy(x))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dropout_draws_every_float_dtype(backend, dtype):
    if not hasattr(backend.xp, dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    layer = xpnet.Dropout(0.5, rng=xpnet.Generator(0))
    x = xpnet.to_device(np.ones((64, 32)), dtype=dtype)
    out = layer(x)
    assert out.dtype == getattr(backend.xp, dtype)
    kept = xpnet.to_numpy(out) != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(xpnet.to_numpy(out)[kept], 2.0)


# The Trainer takes device arrays like host ones (the one rule: xpnet.backend.as_host).

@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_trainer_accepts_device_arrays(monkeypatch, method):
    """Item 6: the Trainer takes device arrays as well as host ones (one rule: xpnet.as_host)."""
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    require_backend("array_api_strict")
    with use_backend("array_api_strict", "device1") as b:
        model = xpnet.Sequential(xpnet.Linear(4, 3, rng=xpnet.Generator(0)))
        trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=5)
        host = np.random.default_rng(0)
        x_host, y_host = host.standard_normal((10, 4)).astype(np.float32), host.integers(0, 3, 10)
        x, y = xpnet.to_device(x_host), xpnet.to_device(y_host)
        if method == "fit":
            history = trainer.fit(x, y, epochs=1)
            assert len(history) == 1 and np.isfinite(history.last["loss"])
            assert model[0].W.data.device == b.device
        elif method == "evaluate":
            assert trainer.evaluate(x, y) == trainer.evaluate(x_host, y_host)
        else:
            np.testing.assert_array_equal(trainer.predict(x), trainer.predict(x_host))


def test_windows_view_contract(backend):
    """ops.windows (item 4): NumPy's view is read-only; CuPy and torch have no read-only arrays,
    so their view is documented as writable-but-treat-as-read-only; the fallback is a copy."""
    from xpnet import ops

    x = xpnet.to_device(np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5))
    win = ops.windows(x, 3, 3, 1)
    assert tuple(win.shape) == (2, 3, 3, 3, 3, 3)
    np.testing.assert_array_equal(xpnet.to_numpy(win)[1, 2, 0, 1],
                                  xpnet.to_numpy(x)[1, 2, 0:3, 1:4])
    if backend.name == "numpy":
        assert not win.flags.writeable and np.shares_memory(win, x)
        with pytest.raises(ValueError, match="read-only"):
            win[0, 0, 0, 0, 0, 0] = 1.0
    generic = fallback(ops.windows, x, 3, 3, 1)
    np.testing.assert_array_equal(xpnet.to_numpy(generic), xpnet.to_numpy(win))
    assert "read-only" in ops.windows.__doc__ and "CuPy" in ops.windows.__doc__
