"""Layers by kind: one module per kind, every layer re-exported here.

- :mod:`.linear`: Linear
- :mod:`.activation`: ReLU, LeakyReLU, Sigmoid, Tanh, GELU, ELU, Identity, Softmax
- :mod:`.normalization`: BatchNorm, LayerNorm
- :mod:`.dropout`: Dropout
- :mod:`.conv`: Conv2d, ConvMaxPool2d and their paths (native, grid, im2col)
- :mod:`.pooling`: MaxPool2d, AvgPool2d, GlobalAvgPool2d
- :mod:`.container`: Sequential, Flatten

A new layer goes in the module of its kind (a new kind gets a new module) and its name in
``__all__`` below, which is also what ``xpnet`` exports at the top level.
"""

from .activation import ELU, GELU, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .container import Flatten, Sequential
from .conv import Conv2d, ConvMaxPool2d
from .dropout import Dropout
from .linear import Linear
from .normalization import BatchNorm, LayerNorm
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d

__all__ = ["ELU", "GELU", "AvgPool2d", "BatchNorm", "Conv2d", "ConvMaxPool2d", "Dropout",
           "Flatten", "GlobalAvgPool2d", "Identity", "LayerNorm", "LeakyReLU", "Linear",
           "MaxPool2d", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh"]
