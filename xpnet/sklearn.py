"""scikit-learn estimators around xpnet models: :class:`XpnetClassifier`, :class:`XpnetRegressor`.

skorch's idea for xpnet: a model (a textbook model by name, or a factory) and the Trainer's
settings become estimator parameters, so ``fit``/``predict``/``score``, ``clone``, ``Pipeline``
and ``GridSearchCV`` work as for ``MLPClassifier``. A fitted estimator pickles its network as
safetensors bytes (no pickled arrays or modules); unpickling rebuilds the network from the
estimator's parameters on the current backend and loads those bytes.

Needs the ``sklearn`` extra (scikit-learn).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # validate_data is scikit-learn 1.6's
    raise ImportError(f'xpnet.sklearn needs scikit-learn 1.6 or later: pip install '
                      f'"xpnet[sklearn]" ({exc})') from None

from . import models
from .io.weights import decode, encode
from .losses import MSE, SoftmaxCrossEntropy
from .module import Module
from .optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp

__all__ = ["MODELS", "OPTIMIZERS", "XpnetClassifier", "XpnetRegressor"]

OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSProp, "adam": Adam, "adamw": AdamW}
#: the textbook models by name; the convolutional ones read ``model_args["input_shape"]``
#: (default (1, 28, 28)) and see each row of X as one image of that shape
MODELS = ("TwoLayerNet", "MultiLayerNet", "SimpleConvNet", "DeepConvNet")


def make_trainer(model: Module, loss: Any, est: _XpnetEstimator) -> Any:
    """The one place an estimator's settings become a :class:`xpnet.train.Trainer`."""
    from .train import Progress, Trainer

    opt = OPTIMIZERS[est.optimizer](model, lr=est.lr, weight_decay=est.weight_decay)
    return Trainer(model, opt, loss, batch_size=est.batch_size, seed=est.random_state,
                   callbacks=[Progress(enabled=False, verbose=est.verbose)])


class _XpnetEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, model building, training,
    pickling through safetensors."""

    def __init__(self, model: str | Callable[[int, int], Module] = "MultiLayerNet", *,
                 model_args: dict[str, Any] | None = None, optimizer: str = "adam",
                 lr: float = 1e-2, weight_decay: float = 0.0, batch_size: int = 32,
                 epochs: int = 60, random_state: int = 0, dtype: str = "float64",
                 verbose: bool = False):
        self.model = model
        self.model_args = model_args
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose

    # ------------------------------------------------------------------ settings
    def _check_settings(self) -> None:
        """Refuse bad settings at fit (scikit-learn's rule: __init__ only stores them)."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{type(self).__name__}: optimizer must be one of "
                             f"{sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (callable(self.model) or self.model in MODELS):
            raise ValueError(f"{type(self).__name__}: model must be one of {MODELS} or a "
                             f"factory model(n_features, n_outputs) -> Module, got "
                             f"{self.model!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{type(self).__name__}: dtype must be 'float32' or 'float64', "
                             f"got {self.dtype!r}")
        for name in ("epochs", "batch_size", "random_state"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < (0 if name != "batch_size" else 1):
                raise ValueError(f"{type(self).__name__}: {name} must be a non-negative "
                                 f"integer (batch_size positive), got {value!r}")

    def _input_shape(self) -> tuple[int, ...] | None:
        if self.model in ("SimpleConvNet", "DeepConvNet"):
            return tuple((self.model_args or {}).get("input_shape", (1, 28, 28)))
        return None

    def _build(self, n_features: int, n_outputs: int) -> Module:
        """A fresh network for ``n_features`` inputs and ``n_outputs`` outputs."""
        args: dict[str, Any] = dict(self.model_args or {})
        if callable(self.model):
            net = self.model(n_features, n_outputs, **args)
            if not isinstance(net, Module):
                raise TypeError(f"{type(self).__name__}: the model factory returned "
                                f"{type(net).__name__}; expected an xpnet Module")
            return net.to_dtype(self.dtype)
        common: dict[str, Any] = {"seed": int(self.random_state), "dtype": self.dtype}
        if self.model == "TwoLayerNet":
            return models.TwoLayerNet(n_features, args.pop("hidden_size", 100), n_outputs,
                                      **common, **args)
        if self.model == "MultiLayerNet":
            return models.MultiLayerNet(n_features, args.pop("hidden_sizes", (100,)),
                                        n_outputs, **common, **args)
        shape = self._input_shape()
        assert shape is not None  # a conv net: the names above are checked in fit
        args.pop("input_shape", None)
        if int(np.prod(shape)) != n_features:
            raise ValueError(f"{type(self).__name__}: {self.model} takes images of shape "
                             f"{shape} (model_args['input_shape']), {int(np.prod(shape))} "
                             f"features per row; X has {n_features}")
        cls = getattr(models, self.model)
        conv_net: Module = cls(shape, output_size=n_outputs, **common, **args)
        return conv_net

    def _as_input(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=self.dtype)
        shape = self._input_shape()
        return X.reshape((X.shape[0], *shape)) if shape else X

    def _train(self, X: np.ndarray, y: np.ndarray, n_outputs: int, loss: Any) -> None:
        self._check_settings()
        self.model_ = self._build(X.shape[1], n_outputs)
        trainer = make_trainer(self.model_, loss, self)
        self.history_ = trainer.fit(self._as_input(X), y, epochs=int(self.epochs))
        self.n_outputs_ = n_outputs

    def _outputs(self, X: Any) -> np.ndarray:
        from .train import predict

        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return np.asarray(predict(self.model_, self._as_input(X), classes=False),
                          dtype=np.float64)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: object's may be __dict__ itself
        if "model_" in state:
            state["model_"] = encode(state["model_"].state_dict(), {})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.get("model_")
        if isinstance(blob, bytes):
            arrays, _ = decode(io.BytesIO(blob), len(blob), "pickled estimator weights")
            net = self._rebuild(state)
            net.load_state_dict(arrays)
            state = {**state, "model_": net}
        super().__setstate__(state)

    def _rebuild(self, state: dict[str, Any]) -> Module:
        est = type(self)(**{k: state[k] for k in self._get_param_names()})
        return est._build(state["n_features_in_"], state["n_outputs_"])


class XpnetClassifier(ClassifierMixin, _XpnetEstimator):
    """A classifier: softmax cross-entropy over ``classes_`` (any labels scikit-learn accepts).

    Parameters: ``model`` ('MultiLayerNet', 'TwoLayerNet', 'SimpleConvNet', 'DeepConvNet' or a
    factory ``model(n_features, n_classes, **model_args) -> Module`` returning logits);
    ``model_args`` (the textbook model's keyword arguments, e.g. ``{"hidden_sizes": (64, 64)}``);
    ``optimizer`` (a name of :data:`OPTIMIZERS`), ``lr``, ``weight_decay``, ``batch_size``,
    ``epochs``, ``random_state`` (weights and shuffling), ``verbose``: the Trainer's settings;
    ``dtype``: the network's ('float64' by default, as scikit-learn computes; a factory's
    model is cast to it).
    """

    def fit(self, X: Any, y: Any) -> XpnetClassifier:
        """Train a fresh network on (X, y) for ``epochs`` epochs; returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y; got 1 "
                             f"class ({self.classes_[0]!r})")
        self._train(X, enc.transform(y).astype(np.int64), len(self.classes_),
                    SoftmaxCrossEntropy())
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (softmax of the network's outputs), columns as ``classes_``."""
        z = self._outputs(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        proba: np.ndarray = z / z.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as a label of ``classes_``."""
        best = np.argmax(self._outputs(X), axis=1)  # checks first that fit ran
        labels: np.ndarray = self.classes_[best]
        return labels


class XpnetRegressor(RegressorMixin, _XpnetEstimator):
    """A regressor: mean squared error on real targets y of shape (N,) or (N, k).

    Parameters as :class:`XpnetClassifier` (a factory gets ``n_outputs`` = k).
    """

    def fit(self, X: Any, y: Any) -> XpnetRegressor:
        """Train a fresh network on (X, y) for ``epochs`` epochs; returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        self._y_1d = y.ndim == 1
        y2 = np.asarray(y, dtype=self.dtype).reshape(len(y), -1)
        self._train(X, y2, y2.shape[1], MSE())
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The network's outputs: shape (N,) for a 1-D training target, else (N, k)."""
        out = self._outputs(X)
        return out[:, 0] if self._y_1d else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
