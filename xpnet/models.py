"""The classic from-scratch models, built from xpnet's layers.

Each model is a :class:`~xpnet.layers.Sequential`, so parameters have stable names ('0.W', ...)
and the same forward/backward/step loop trains all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import validate
from .init import InitSpec
from .layers import (
    BatchNorm,
    Conv2d,
    ConvMaxPool2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from .module import Module
from .rng import Generator

__all__ = ["DeepConvNet", "MultiLayerNet", "SimpleConvNet", "TwoLayerNet"]

_ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class TwoLayerNet(Sequential):
    """input -> Linear -> ReLU -> Linear -> logits (the textbook's TwoLayerNet, CS231n's
    two-layer net). Default 784-100-10 with He initialisation."""

    def __init__(self, input_size: int = 784, hidden_size: int = 100, output_size: int = 10,
                 *, init: InitSpec = "he", seed: int = 0, dtype: str = "float32"):
        rng = Generator(seed)
        super().__init__(
            Linear(input_size, hidden_size, init=init, rng=rng, dtype=dtype),
            ReLU(),
            Linear(hidden_size, output_size, init=init, rng=rng, dtype=dtype))
        self.num_classes = output_size


class MultiLayerNet(Sequential):
    """Fully connected net: for each hidden size, Linear [-> BatchNorm] -> activation
    [-> Dropout], then a Linear output layer (the textbook's MultiLayerNet(Extend)).

    ``init`` is 'auto' (He for relu, Xavier for sigmoid/tanh), 'he', 'xavier', or a float std
    (the textbook's ``weight_init_std``). Weight decay belongs to the optimizer
    (``weight_decay=`` / ``l1=``), which decays the weights and not the biases.
    """

    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int, *,
                 activation: str = "relu", init: InitSpec = "auto", batchnorm: bool = False,
                 dropout: float = 0.0, seed: int = 0, dtype: str = "float32"):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MultiLayerNet: activation must be one of "
                             f"{sorted(_ACTIVATIONS)}, got {activation!r}")
        if isinstance(init, str) and init == "auto":
            init = "he" if activation == "relu" else "xavier"
        rng = Generator(seed)
        layers: list[Module] = []
        sizes = [input_size, *hidden_sizes]
        for i, size in enumerate(hidden_sizes):
            validate.positive_int("MultiLayerNet", f"hidden_sizes[{i}]", size)
            layers.append(Linear(sizes[i], size, init=init, rng=rng, dtype=dtype))
            if batchnorm:
                layers.append(BatchNorm(size, dtype=dtype))
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(Dropout(dropout, rng=Generator(seed + 1000 + i)))
        layers.append(Linear(sizes[-1], output_size, init=init, rng=rng, dtype=dtype))
        super().__init__(*layers)
        self.num_classes = output_size


class SimpleConvNet(Sequential):
    """conv(30 filters 5x5) -> ReLU -> maxpool 2 -> Linear(100) -> ReLU -> Linear(10)
    (the textbook's SimpleConvNet). Input (N, 1, 28, 28) by default.

    The layers run as conv+maxpool (one fused :class:`~xpnet.layers.ConvMaxPool2d`) -> ReLU:
    max-pooling commutes with ReLU (a non-decreasing function), so the output and every
    gradient are exactly those of conv -> ReLU -> maxpool, while the ReLU touches a 4x smaller
    array and the pool reads contiguous memory.
    """

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), filters: int = 30,
                 kernel_size: int = 5, hidden_size: int = 100, output_size: int = 10, *,
                 init: InitSpec = "he", seed: int = 0, dtype: str = "float32"):
        c, h, w = input_shape
        rng = Generator(seed)
        conv_h, conv_w = h - kernel_size + 1, w - kernel_size + 1
        flat = filters * (conv_h // 2) * (conv_w // 2)
        super().__init__(
            ConvMaxPool2d(c, filters, kernel_size, pool=2, init=init, rng=rng, dtype=dtype),
            ReLU(),
            Flatten(),
            Linear(flat, hidden_size, init=init, rng=rng, dtype=dtype),
            ReLU(),
            Linear(hidden_size, output_size, init=init, rng=rng, dtype=dtype))
        self.num_classes = output_size


class DeepConvNet(Sequential):
    """The textbook's DeepConvNet: 3x3 convs 16-16-pool-32-32-pool-64-64-pool, each followed by
    ReLU, then Linear(50) -> ReLU -> Dropout(0.5) -> Linear(10) -> Dropout(0.5); He init.
    Input (N, 1, 28, 28). As in :class:`SimpleConvNet`, each pool runs before the ReLU that
    precedes it in the book (identical results, less work). The pools are not fused with
    their convs here: with 16-64 channels on 28x28 down to 8x8 images the pool-blocked
    im2col copy runs over 4-14-element rows, and the fused layers measured ~10% slower
    (147 vs 169 ms per batch of 100)."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), output_size: int = 10,
                 *, dropout: float = 0.5, seed: int = 0, dtype: str = "float32"):
        c, h, w = input_shape
        if (h, w) != (28, 28):
            raise ValueError(f"DeepConvNet: input_shape {input_shape} unsupported; expected "
                             "(C, 28, 28)")
        rng = Generator(seed)
        layers: list[Module] = []
        # (in, out, padding) per conv; the fourth conv pads by 2 as in the book (14 -> 16)
        spec = [(c, 16, 1), (16, 16, 1), None, (16, 32, 1), (32, 32, 2), None,
                (32, 64, 1), (64, 64, 1), None]
        for item in spec:
            if item is None:
                layers[-1:] = [MaxPool2d(2), layers[-1]]  # pool before the ReLU, see above
            else:
                cin, cout, pad = item
                layers += [Conv2d(cin, cout, 3, padding=pad, rng=rng, dtype=dtype), ReLU()]
        layers += [Flatten(), Linear(64 * 4 * 4, 50, rng=rng, dtype=dtype), ReLU(),
                   Dropout(dropout, rng=Generator(seed + 1)),
                   Linear(50, output_size, rng=rng, dtype=dtype),
                   Dropout(dropout, rng=Generator(seed + 2))]
        super().__init__(*layers)
        self.num_classes = output_size
