"""xpnet.sklearn: scikit-learn's own estimator checks, Pipeline and GridSearchCV on the moons,
pickling through safetensors, clone, factories and the textbook models by name."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

import xpnet  # noqa: E402
from xpnet.data import moons  # noqa: E402
from xpnet.sklearn import XpnetClassifier, XpnetRegressor  # noqa: E402

# checks scikit-learn itself skips here, and why (check_estimator reports them as skipped):
# - check_array_api_input: runs only with SCIPY_ARRAY_API=1 set before scipy is imported;
# - check_classifier_data_not_an_array / check_regressor_data_not_an_array (their pandas
#   variant): run only when pandas is installed.
# Nothing is skipped or expected to fail by the estimators' own choice.


@pytest.mark.parametrize("make", [XpnetClassifier, XpnetRegressor],
                         ids=["classifier", "regressor"])
def test_scikit_learn_estimator_checks(make):
    results = check_estimator(make(), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert not failed
    passed = [r for r in results if r["status"] == "passed"]
    assert len(passed) >= 45  # the suite ran (about 50 checks in scikit-learn 1.6-1.9)


def moons_split():
    X, y = moons(400, noise=0.2, seed=0)
    return X[:300], y[:300], X[300:], y[300:]


def test_pipeline_and_grid_search_on_the_moons():
    X, y, X_test, y_test = moons_split()
    pipe = make_pipeline(StandardScaler(), XpnetClassifier(epochs=20, batch_size=50))
    search = GridSearchCV(pipe, {"xpnetclassifier__lr": [1e-3, 2e-2]}, cv=2)
    search.fit(X, y)
    assert search.best_params_ == {"xpnetclassifier__lr": 2e-2}  # 20 epochs at 1e-3: too few
    assert search.score(X_test, y_test) > 0.9
    proba = search.predict_proba(X_test)
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_pickle_holds_safetensors_bytes_and_predicts_the_same():
    X, y, X_test, _ = moons_split()
    labels = np.where(y == 1, "up", "down")
    clf = XpnetClassifier(epochs=5, model_args={"hidden_sizes": (16, 16)}).fit(X, labels)
    state = clf.__getstate__()
    assert isinstance(state["model_"], bytes) and state["model_"][8:9] == b"{"  # safetensors
    assert isinstance(clf.model_, xpnet.Module)  # pickling left the estimator as it was
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X_test), clf.predict_proba(X_test))
    assert set(again.predict(X_test)) <= {"down", "up"}


def test_clone_is_unfitted_with_the_same_parameters():
    clf = XpnetClassifier(lr=0.05, epochs=3).fit(*moons_split()[:2])
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "model_")
    assert twin.set_params(lr=0.1).lr == 0.1


def test_regressor_one_and_several_targets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = np.stack([X[:, 0] - 2 * X[:, 1], X[:, 2] ** 2], axis=1)
    one = XpnetRegressor(epochs=40).fit(X, y[:, 0])
    assert one.predict(X).shape == (200,) and one.score(X, y[:, 0]) > 0.9
    both = XpnetRegressor(epochs=40).fit(X, y)
    assert both.predict(X).shape == (200, 2) and both.score(X, y) > 0.8


def test_a_model_factory_and_a_textbook_conv_net_by_name():
    def factory(n_features, n_outputs, width=8):
        return xpnet.Sequential(xpnet.Linear(n_features, width, rng=xpnet.Generator(0)),
                                xpnet.Tanh(),
                                xpnet.Linear(width, n_outputs, rng=xpnet.Generator(1)))

    X, y, X_test, y_test = moons_split()
    clf = XpnetClassifier(factory, model_args={"width": 16}, epochs=30).fit(X, y)
    assert clf.model_.num_parameters() == 2 * 16 + 16 + 16 * 2 + 2
    assert clf.score(X_test, y_test) > 0.85
    rng = np.random.default_rng(1)
    images = rng.normal(size=(60, 64))
    labels = (images[:, :32].sum(axis=1) > 0).astype(int)
    conv = XpnetClassifier("SimpleConvNet", epochs=2, dtype="float32", model_args={
        "input_shape": (1, 8, 8), "filters": 3, "kernel_size": 3, "hidden_size": 8}
    ).fit(images, labels)
    assert conv.predict(images).shape == (60,)


def test_bad_settings_are_refused_at_fit_naming_them():
    X, y = moons_split()[:2]
    with pytest.raises(ValueError, match="optimizer must be one of .*got 'lbfgs'"):
        XpnetClassifier(optimizer="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="model must be one of .*got 'ResNet'"):
        XpnetClassifier("ResNet").fit(X, y)
    with pytest.raises(ValueError, match=r"takes images of shape \(1, 28, 28\).* X has 2"):
        XpnetClassifier("SimpleConvNet").fit(X, y)
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        XpnetClassifier().fit(X, np.zeros(len(X)))
    with pytest.raises(TypeError, match="factory returned dict; expected an xpnet Module"):
        XpnetClassifier(lambda n, k: {}).fit(X, y)
