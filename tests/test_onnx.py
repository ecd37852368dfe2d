"""ONNX export through ndonnx, verified with onnxruntime: every textbook model and the README's
own Module, any batch size, the model left as it was, and the command line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet.__main__ import main
from xpnet.io import export_onnx
from xpnet.models import DeepConvNet, MultiLayerNet, SimpleConvNet, TwoLayerNet

pytest.importorskip("ndonnx")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

README = Path(__file__).resolve().parents[1] / "README.md"


def xpnet_outputs(model, x):
    model.eval()
    with xpnet.no_grad():
        return xpnet.to_numpy(model(xpnet.to_device(x)))


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def assert_matches(path, model, input_shape, dtype=np.float32):
    """onnxruntime's outputs equal xpnet's within relative 1e-5, at batch sizes 1 and 5."""
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, *input_shape)).astype(dtype)
        got, want = run_onnx(path, x), xpnet_outputs(model, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def route(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["xpnet.route"]


def multilayer():
    model = MultiLayerNet(30, [20, 10], 4, batchnorm=True, dropout=0.3, activation="tanh")
    rng = np.random.default_rng(0)  # running statistics of their own: eval mode uses them
    for i in ("1", "5"):
        bn = model.modules()[i]
        size = bn.running_mean.shape[0]
        bn.running_mean = xpnet.to_device(rng.normal(size=size), dtype="float32")
        bn.running_var = xpnet.to_device(rng.uniform(0.5, 2, size=size), dtype="float32")
    return model


MODELS = {
    "TwoLayerNet": (lambda: TwoLayerNet(), (784,)),
    "MultiLayerNet": (multilayer, (30,)),
    "SimpleConvNet": (lambda: SimpleConvNet(), (1, 28, 28)),
    "DeepConvNet": (lambda: DeepConvNet(), (1, 28, 28)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_textbook_model_matches_onnxruntime(name, tmp_path):
    make, shape = MODELS[name]
    model = make()
    path = export_onnx(model, tmp_path / f"{name}.onnx", shape)
    assert_matches(path, model, shape)
    graph_input = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert graph_input[0].dim_param == "batch"  # a free batch size
    assert [d.dim_value for d in graph_input[1:]] == list(shape)


def test_export_from_every_backend(backend, tmp_path):
    model = TwoLayerNet(12, 8, 3)
    path = export_onnx(model, tmp_path / "m.onnx", (12,))
    assert route(path) == "direct"
    x = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(path, x), xpnet_outputs(model, x), rtol=1e-5,
                               atol=1e-6)


def test_float64_model_exports_float64(tmp_path):
    model = TwoLayerNet(6, 5, 2, dtype="float64")
    path = export_onnx(model, tmp_path / "m.onnx", (6,))
    assert_matches(path, model, (6,), dtype=np.float64)


def test_the_model_is_left_as_it_was(tmp_path):
    model = multilayer()
    params = {k: p.data for k, p in model.parameters().items()}
    buffers = model.buffers()
    export_onnx(model.train(), tmp_path / "m.onnx", (30,))
    assert all(m.training for m in model.modules().values())
    assert all(p.data is params[k] for k, p in model.parameters().items())
    assert all(v is buffers[k] for k, v in model.buffers().items())


def test_readme_module_matches_onnxruntime(tmp_path):
    """The user-defined Net of the README (its own LayerNorm and Swish), trained a little."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    upto = next(i for i, b in enumerate(blocks) if "class Net(xpnet.Module)" in b)
    namespace: dict = {}
    for code in blocks[:upto + 1]:
        exec(compile(code, "README.md", "exec"), namespace)
    net = namespace["Net"](2, 16, 3, seed=2)
    net.norm.gamma.data = xpnet.to_device(np.linspace(0.5, 1.5, 16), dtype="float32")
    path = export_onnx(net, tmp_path / "net.onnx", (2,))
    assert_matches(path, net, (2,))


def test_bad_arguments_are_refused_before_tracing(tmp_path):
    with pytest.raises(TypeError, match="model must be an xpnet Module, got dict"):
        export_onnx({}, tmp_path / "m.onnx", (3,))
    for shape in (3, None, (), (0, 2), (2.5,), "784"):
        with pytest.raises(ValueError, match="input_shape must be one example's shape"):
            export_onnx(TwoLayerNet(3, 2, 2), tmp_path / "m.onnx", shape)
    assert not list(tmp_path.iterdir())


def test_cli_exports_a_checkpoint_and_a_weights_file(tmp_path, capsys):
    from xpnet.io.checkpoint import save_checkpoint

    model = SimpleConvNet((1, 12, 12), filters=4, kernel_size=3, hidden_size=8, output_size=3)
    save_checkpoint(tmp_path / "run.npz", model.state_dict())
    assert main(["export", str(tmp_path / "run.npz"), "--model", "SimpleConvNet",
                 "--onnx", str(tmp_path / "a.onnx"),
                 "--safetensors", str(tmp_path / "w.safetensors")]) == 0
    assert_matches(tmp_path / "a.onnx", model, (1, 12, 12))
    # the weights file names its model: no --model needed
    assert main(["export", str(tmp_path / "w.safetensors"), "--onnx",
                 str(tmp_path / "b.onnx")]) == 0
    assert_matches(tmp_path / "b.onnx", model, (1, 12, 12))
    out = capsys.readouterr().out
    assert "xpnet export: SimpleConvNet (input (batch, 1, 12, 12)) -> " in out


def test_cli_model_args_override_inferred_sizes(tmp_path):
    model = MultiLayerNet(5, [4], 2, activation="sigmoid")
    xpnet.save_weights(model, tmp_path / "w.safetensors")
    assert main(["export", str(tmp_path / "w.safetensors"), "--onnx", str(tmp_path / "m.onnx"),
                 "--model-args", '{"activation": "sigmoid"}']) == 0
    assert_matches(tmp_path / "m.onnx", model, (5,))


@pytest.mark.parametrize("args, message", [
    (["{ck}", "--onnx", "o.onnx"], "does not name its model .* give --model"),
    (["{ck}", "--model", "ResNet", "--onnx", "o.onnx"], "unknown model 'ResNet'; expected one "
                                                        "of TwoLayerNet"),
    (["{ck}", "--model", "TwoLayerNet"], "nothing to write"),
    (["{ck}", "--model", "TwoLayerNet", "--model-args", "{x", "--onnx", "o.onnx"],
     "--model-args must be a JSON object"),
    (["{ck}", "--model", "TwoLayerNet", "--model-args", "[1]", "--onnx", "o.onnx"],
     "--model-args must be a JSON object"),
    (["{ck}", "--model", "TwoLayerNet", "--model-args", '{"hidden_size": 3}', "--onnx",
      "o.onnx"], r"does not fit TwoLayerNet: parameter '0\.W'"),
    (["{missing}", "--model", "TwoLayerNet", "--onnx", "o.onnx"], "does not exist"),
    (["{ck}", "--model", "TwoLayerNet", "--input-shape", "a,b", "--onnx", "o.onnx"],
     "--input-shape must be sizes separated by commas, such as 1,28,28; got 'a,b'"),
])
def test_cli_mistakes_are_one_line(tmp_path, capsys, args, message):
    from xpnet.io.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck.npz", TwoLayerNet(4, 5, 2).state_dict())
    paths = {"{ck}": str(tmp_path / "ck.npz"), "{missing}": str(tmp_path / "no.npz")}
    args = [paths.get(a, a) for a in args]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpnet: error: ")
    assert re.search(message, err), err
