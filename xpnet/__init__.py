"""xpnet: a small, fast, honest deep-learning library written once against the Array API.

The backend (NumPy, CuPy, PyTorch, array_api_strict) is chosen at runtime by ``XPNET_BACKEND`` or
:func:`set_backend`; every layer, loss and optimizer runs unchanged on each.
"""

from .activations import ELU, GELU, Identity
from .backend import (
    Backend,
    BackendError,
    DeviceMismatchError,
    available_backends,
    current,
    get_backend,
    set_backend,
    to_device,
    to_numpy,
)
from .conv import AvgPool2d, Conv2d, ConvMaxPool2d, MaxPool2d
from .global_pool import GlobalAvgPool2d
from .io import load_weights, save_weights
from .layers import (
    BatchNorm,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from .losses import MSE, SoftmaxCrossEntropy
from .module import Module, Parameter, no_grad
from .normalization import LayerNorm
from .optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp, clip_grad_norm
from .rng import Generator
from .schedules import CosineLR, ExponentialLR, StepLR
from .seed import manual_seed

__version__ = "0.1.0"

__all__ = [
    "ELU", "GELU", "MSE", "AdaGrad", "Adam", "AdamW", "AvgPool2d", "Backend",
    "BackendError", "BatchNorm", "Conv2d", "ConvMaxPool2d", "CosineLR", "DeviceMismatchError",
    "Dropout", "ExponentialLR", "Flatten", "Generator", "GlobalAvgPool2d", "Identity",
    "LayerNorm", "LeakyReLU", "Linear", "MaxPool2d", "Module", "Momentum", "Nesterov",
    "Parameter", "RMSProp", "ReLU", "SGD", "Sequential", "Sigmoid", "Softmax",
    "SoftmaxCrossEntropy", "StepLR", "Tanh", "available_backends", "clip_grad_norm", "current",
    "get_backend", "load_weights", "manual_seed", "no_grad", "save_weights", "set_backend",
    "to_device", "to_numpy",
    "__version__",
]
