"""Data as users have it at the data boundary (Trainer.fit, evaluate, predict, BatchLoader):
lists and NumPy arrays of any real or integer dtype are cast to the model's dtype; device
arrays of another dtype are cast on their device; labels may be lists or any integer dtype.
Layers called directly stay strict."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev, to_np

import xpnet
from xpnet.data import BatchLoader
from xpnet.models import TwoLayerNet
from xpnet.train import Progress, Trainer, evaluate, predict


def _data(n=40, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)  # float64, int64


def _trainer(model, **kw):
    return Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=10,
                   callbacks=[Progress(enabled=False)], **kw)


def _dtype(a) -> str:
    return str(getattr(a.dtype, "name", a.dtype)).rsplit(".", 1)[-1]


def _same_run(x, y, reference):
    """fit + evaluate + predict on (x, y) match the run on float32 NumPy ``reference``."""
    model, ref_model = TwoLayerNet(5, 7, 3, seed=1), TwoLayerNet(5, 7, 3, seed=1)
    history = _trainer(model).fit(x, y, 2, x_test=x, y_test=y)
    ref = _trainer(ref_model).fit(*reference, 2, x_test=reference[0], y_test=reference[1])
    np.testing.assert_allclose(history["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["test_acc"], ref["test_acc"])
    np.testing.assert_array_equal(_trainer(model).predict(x),
                                  _trainer(ref_model).predict(reference[0]))
    return model


@pytest.mark.parametrize("form", ["float64", "list", "int", "float16"])
def test_fit_evaluate_predict_take_host_data_as_users_have_it(backend, form):
    x, y = _data()
    if form == "int":
        x = np.round(x * 3).astype(np.int32)
    elif form == "float16":
        x = x.astype(np.float16)
    reference = (x.astype(np.float32), y)
    labels = {"float64": y.astype(np.uint8), "list": y.tolist(), "int": y.astype(np.int16),
              "float16": y}[form]
    _same_run(x.tolist() if form == "list" else x, labels, reference)


def test_device_arrays_of_another_dtype_are_cast_on_the_device(backend):
    x, y = _data()
    model = _same_run(dev(x), dev(y.astype(np.int32)), (x.astype(np.float32), y))
    scores = evaluate(model, xpnet.SoftmaxCrossEntropy(), dev(x), dev(y), batch_size=7)
    same = evaluate(model, xpnet.SoftmaxCrossEntropy(), x.astype(np.float32), y, batch_size=7)
    assert scores == pytest.approx(same, rel=1e-6)


def test_a_float64_model_gets_float64_batches(backend):
    x, y = _data()
    model = TwoLayerNet(5, 7, 3, seed=1).to_dtype("float64")
    seen = []
    forward = model.forward
    model.forward = lambda xb: (seen.append(_dtype(xb)), forward(xb))[1]
    _trainer(model).fit(x.astype(np.float32).tolist(), y.tolist(), 1)
    predict(model, x.astype(np.float32), batch_size=16)
    assert set(seen) == {"float64"}


def test_real_valued_targets_get_the_models_dtype(backend):
    x, _ = _data()
    targets = x[:, :3] * 2.0  # float64 targets for a float32 model
    model = TwoLayerNet(5, 7, 3, seed=1)
    history = _trainer(model, loss=xpnet.MSE()).fit(x, targets.tolist(), 1, x_test=x,
                                                    y_test=targets)
    assert np.isfinite(history.last["test_loss"])
    out = _trainer(model, loss=xpnet.MSE()).predict(x.tolist())
    assert out.shape == (40, 3) and out.dtype == np.float32


def test_batch_loader_casts_once_to_the_dtype_it_is_given(backend):
    x, y = _data(n=12)
    xb, yb = next(iter(BatchLoader(x, y.astype(np.uint8), 5, shuffle=False, dtype="float32")))
    assert _dtype(xb) == "float32" and _dtype(yb) == "int64"
    np.testing.assert_array_equal(to_np(xb), x[:5].astype(np.float32))
    listed, _ = next(iter(BatchLoader(x.tolist(), y.tolist(), 5, shuffle=False)))
    assert _dtype(listed) == "float32"  # lists of numbers: xpnet's default
    kept, _ = next(iter(BatchLoader(x, y, 5, shuffle=False)))
    assert _dtype(kept) == "float64"  # a NumPy array without dtype= keeps its own
    with pytest.raises(ValueError, match=r"dtype: expected 'float16', 'float32' or 'float64', "
                                         r"got 'int8'"):
        BatchLoader(x, y, 5, dtype="int8")


def test_layers_called_directly_stay_strict(backend):
    model = TwoLayerNet(5, 7, 3, seed=1)
    with pytest.raises(TypeError, match=r"input x has dtype \S*float64; expected \S*float32"):
        model(dev(_data()[0]))
