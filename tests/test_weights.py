"""save_weights / load_weights: safetensors round trips, another process, checkpoints, torch
cross-loading both ways, and every refusal naming what was given and what was expected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet.io import WeightsError, read_weights
from xpnet.io.checkpoint import load_checkpoint, save_checkpoint
from xpnet.io.weights import MAX_HEADER_BYTES, encode
from xpnet.models import MultiLayerNet, SimpleConvNet, TwoLayerNet

ROOT = Path(__file__).resolve().parents[1]


def outputs(model, x_host):
    model.eval()
    with xpnet.no_grad():
        return xpnet.to_numpy(model(xpnet.to_device(x_host)))


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_round_trip_on_every_backend(backend, tmp_path):
    model = MultiLayerNet(6, [5, 4], 3, batchnorm=True)
    # running statistics are saved too: give them values of their own
    model.modules()["1"].running_mean = xpnet.to_device(np.linspace(-1, 1, 5), dtype="float32")
    path = xpnet.save_weights(model, tmp_path / "m.safetensors")
    fresh = MultiLayerNet(6, [5, 4], 3, batchnorm=True, seed=7)
    assert not same_state(model, fresh)
    assert xpnet.load_weights(fresh, path) is fresh
    assert same_state(model, fresh)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_array_equal(outputs(model, x), outputs(fresh, x))
    arrays, meta = read_weights(path)
    assert meta == {"format": "xpnet-weights-1", "layout": "xpnet", "model": "MultiLayerNet"}
    assert list(arrays) == list(model.state_dict())


def test_a_fresh_model_in_another_process_predicts_identically(tmp_path):
    model = SimpleConvNet((1, 12, 12), filters=4, kernel_size=3, hidden_size=8, output_size=3)
    x = np.random.default_rng(1).normal(size=(5, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    xpnet.save_weights(model, tmp_path / "w.safetensors")
    code = (
        "import numpy as np, xpnet\n"
        "from xpnet.models import SimpleConvNet\n"
        "m = SimpleConvNet((1, 12, 12), filters=4, kernel_size=3, hidden_size=8, output_size=3,"
        " seed=99)\n"
        "xpnet.load_weights(m, 'w.safetensors').eval()\n"
        "with xpnet.no_grad():\n"
        "    y = xpnet.to_numpy(m(xpnet.to_device(np.load('x.npy'))))\n"
        "np.save('y.npy', y)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XPNET_BACKEND": "numpy"}
    env.pop("XPNET_DEVICE", None)
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                   timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), outputs(model, x))


def test_loads_a_training_checkpoint(tmp_path):
    from xpnet.train import Trainer

    model = TwoLayerNet(4, 6, 2)
    x = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    trainer = Trainer(model, xpnet.Adam(model, lr=1e-2), batch_size=10,
                      callbacks=[xpnet.train.Progress(enabled=False)])
    trainer.fit(x, y, epochs=1)
    path = trainer.save(tmp_path / "run.npz")
    fresh = xpnet.load_weights(TwoLayerNet(4, 6, 2, seed=3), path)
    assert same_state(model, fresh)


def test_load_state_dict_refuses_paths_and_checkpoints(tmp_path):
    model = TwoLayerNet(4, 6, 2)
    path = save_checkpoint(tmp_path / "ck.npz", model.state_dict())
    for wrong in (str(path), path, load_checkpoint(path)):
        with pytest.raises(TypeError, match=r"state must be a dict of arrays .*got "
                                            r"(str|PosixPath|Checkpoint); .*xpnet\.load_weights"):
            model.load_state_dict(wrong)
    with pytest.raises(TypeError, match="got list"):
        model.load_state_dict([1, 2])
    model.load_state_dict(load_checkpoint(path).model)  # what was meant: the dict inside


def test_wrong_arguments_say_what_is_expected(tmp_path):
    model = TwoLayerNet(4, 6, 2)
    with pytest.raises(TypeError, match="path must be a file path .*got dict; for a dict of "
                                        r"arrays use model\.load_state_dict"):
        xpnet.load_weights(model, model.state_dict())
    with pytest.raises(TypeError, match="model must be an xpnet Module .*got str"):
        xpnet.load_weights("w.safetensors", model)
    with pytest.raises(TypeError, match="model must be an xpnet Module"):
        xpnet.save_weights(model.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist; expected "
                                                "a safetensors file"):
        xpnet.load_weights(model, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="layout must be one of"):
        xpnet.save_weights(model, tmp_path / "w.safetensors", layout="keras")
    with pytest.raises(TypeError, match="metadata must be a dict of str to str"):
        xpnet.save_weights(model, tmp_path / "w.safetensors", metadata={"epochs": 3})
    with pytest.raises(IsADirectoryError, match="is a directory"):
        xpnet.save_weights(model, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written by any refused call


def test_mismatches_name_the_parameter(tmp_path):
    path = xpnet.save_weights(TwoLayerNet(4, 6, 2), tmp_path / "w.safetensors")
    wider = TwoLayerNet(4, 7, 2)
    before = wider.state_dict()
    with pytest.raises(WeightsError, match=r"w\.safetensors does not fit TwoLayerNet: "
                                           r"parameter '0\.W': saved shape \(4, 6\)"):
        xpnet.load_weights(wider, path)
    double = TwoLayerNet(4, 6, 2, dtype="float64")
    with pytest.raises(WeightsError, match=r"parameter '0\.W' is float32; the model's is "
                                           r"float64 .*to_dtype\('float32'\)"):
        xpnet.load_weights(double, path)
    with pytest.raises(WeightsError, match=r"missing \['1\.gamma'"):
        xpnet.load_weights(MultiLayerNet(4, [6], 2, batchnorm=True), path)
    after = wider.state_dict()
    assert all(np.array_equal(v, after[k]) for k, v in before.items())  # untouched


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + text + data)
    return path


@pytest.mark.parametrize("header, data, length, message", [
    ({}, b"", MAX_HEADER_BYTES + 1, "header .*limit is 100000000"),
    ({}, b"", 10_000, "claims a 10000-byte header"),
    (b"[1, 2]", b"", None, "header is a JSON list; expected an object"),
    (b"\xff{", b"", None, "header is not JSON"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None,
     r"tensor 'w' has data_offsets \[0, 8\]; expected \[begin, end\] within the file's 4"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     r"tensor 'w': 8 bytes do not hold shape \(3,\) of F32"),
    ({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None,
     "tensor 'w' has dtype 'BF16'; expected one of"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None,
     "tensor 'w' has shape"),
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, None,
     "tensor 'w': expected an entry with dtype, shape and data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None,
     "tensors 'a' and 'b' overlap"),
    ({"__metadata__": {"n": 3}}, b"", None, "__metadata__ must map strings to strings"),
])
def test_reader_refuses_malformed_files(tmp_path, header, data, length, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(WeightsError, match=message):
        read_weights(path)


def test_reader_refuses_short_files(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(WeightsError, match="2 bytes, too short for a safetensors header"):
        read_weights(tmp_path / "short.safetensors")


def test_reader_reads_every_dtype_and_big_endian_input(tmp_path):
    state = {"f64": np.arange(3.0), "f16": np.ones((2, 2), np.float16),
             "i64": np.arange(4).reshape(2, 2), "u8": np.arange(5, dtype=np.uint8),
             "b": np.array([True, False]), "be": np.arange(3, dtype=">f4"),
             "empty": np.zeros((0, 3), np.float32)}
    (tmp_path / "all.safetensors").write_bytes(encode(state, {"k": "v"}))
    arrays, meta = read_weights(tmp_path / "all.safetensors")
    assert meta == {"k": "v"}
    for k, v in state.items():
        assert arrays[k].shape == v.shape and np.array_equal(arrays[k], v), k
        assert arrays[k].dtype.isnative, k


def test_huggingface_safetensors_reads_and_writes_the_same_format(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    model = SimpleConvNet((1, 10, 10), filters=3, kernel_size=3, hidden_size=5, output_size=2)
    path = xpnet.save_weights(model, tmp_path / "w.safetensors", metadata={"epoch": "3"})
    theirs = st.load_file(str(path))
    assert all(np.array_equal(theirs[k], v) for k, v in model.state_dict().items())
    with safe_open(str(path), "np") as f:
        assert f.metadata()["epoch"] == "3" and f.metadata()["model"] == "SimpleConvNet"
    st.save_file(model.state_dict(), str(tmp_path / "hf.safetensors"))  # sorted, aligned
    fresh = xpnet.load_weights(SimpleConvNet((1, 10, 10), filters=3, kernel_size=3,
                                             hidden_size=5, output_size=2, seed=5),
                               tmp_path / "hf.safetensors")
    assert same_state(model, fresh)


# ---------------------------------------------------------------- PyTorch, both directions
def torch_twolayer(torch):
    nn = torch.nn
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))


def torch_simpleconv(torch):
    nn = torch.nn  # xpnet's fused conv+pool is torch's conv, pool; ReLU after the pool
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, 12), nn.ReLU(), nn.Linear(12, 4))


# xpnet module path -> torch module path, where the two Sequentials number differently
SIMPLECONV_PATHS = {"0": "0", "3": "4", "5": "6"}


def rename(state, paths, reverse=False):
    paths = {v: k for k, v in paths.items()} if reverse else paths
    return {f"{paths[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in state.items()}


CASES = {
    "TwoLayerNet": (lambda: TwoLayerNet(20, 16, 5), torch_twolayer, None, (7, 20), "2"),
    "SimpleConvNet": (lambda: SimpleConvNet((1, 12, 12), filters=6, kernel_size=3,
                                            hidden_size=12, output_size=4),
                      torch_simpleconv, SIMPLECONV_PATHS, (7, 1, 12, 12), "5"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_xpnet_weights_load_into_torch_nn(name, tmp_path):
    torch = pytest.importorskip("torch")
    make, make_torch, paths, shape, _ = CASES[name]
    model = make()
    path = xpnet.save_weights(model, tmp_path / "w.safetensors", layout="torch")
    arrays, meta = read_weights(path)
    assert meta["layout"] == "torch"
    state = rename(arrays, paths) if paths else arrays
    net = make_torch(torch)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})  # strict
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, outputs(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_nn_weights_load_into_xpnet(name, tmp_path):
    torch = pytest.importorskip("torch")
    make, make_torch, paths, shape, last = CASES[name]
    torch.manual_seed(0)
    net = make_torch(torch)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    state = rename(state, paths, reverse=True) if paths else state
    # no metadata, as torch's own safetensors writer leaves it: the names tell the layout
    (tmp_path / "torch.safetensors").write_bytes(encode(state, {}))
    model = xpnet.load_weights(make(), tmp_path / "torch.safetensors")
    # the last Linear: torch's (out, in) weight became xpnet's (in, out) W
    np.testing.assert_array_equal(model.state_dict()[f"{last}.W"], state[f"{last}.weight"].T)
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outputs(model, x), theirs, rtol=1e-5, atol=1e-6)
