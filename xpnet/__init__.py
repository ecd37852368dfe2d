"""xpnet: a small, fast, honest deep-learning library written once against the Array API.

The backend (NumPy, CuPy, PyTorch, array_api_strict) is chosen at runtime by ``XPNET_BACKEND`` or
:func:`set_backend`; every layer, loss and optimizer runs unchanged on each.
"""

from . import layers
from .backend import (
    Backend,
    BackendError,
    DeviceMismatchError,
    available_backends,
    current,
    set_backend,
    to_device,
    to_numpy,
)
from .grad_mode import no_grad
from .io import load_weights, save_weights
from .layers import *  # noqa: F403 (every layer, listed once in xpnet.layers.__all__)
from .losses import MSE, SoftmaxCrossEntropy
from .module import Module, Parameter
from .optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp, clip_grad_norm
from .precision import autocast
from .rng import Generator, manual_seed
from .schedules import CosineLR, ExponentialLR, StepLR

__version__ = "0.1.0"

__all__ = [
    *layers.__all__,
    "MSE", "AdaGrad", "Adam", "AdamW", "Backend", "BackendError", "CosineLR",
    "DeviceMismatchError", "ExponentialLR", "Generator", "Module", "Momentum", "Nesterov",
    "Parameter", "RMSProp", "SGD", "SoftmaxCrossEntropy", "StepLR", "available_backends",
    "clip_grad_norm", "current", "load_weights", "manual_seed", "no_grad", "save_weights",
    "set_backend",
    "to_device", "to_numpy", "__version__", "autocast",
]
