"""The plain-PyTorch models the benchmark scripts train: ``nn.Sequential`` equivalents of
xpnet's TwoLayerNet, SimpleConvNet (at any filter count) and DeepConvNet, trained with autograd
and ``torch.optim``. The one copy in benchmarks/ (threads_ab.py, scaling.py).

torch is imported when a model is built, not with this module, so a script can set its thread
variables first.
"""

from __future__ import annotations

from typing import Any

MODELS = ("mlp", "cnn", "deep")


def torch_net(model: str, filters: int = 30) -> Any:
    """A freshly initialised (torch's default init) ``nn.Sequential``:

    - ``mlp``: Linear(784, 100) -> ReLU -> Linear(100, 10), input (N, 784);
    - ``cnn``: Conv2d(1, filters, 5) -> ReLU -> MaxPool2d(2) -> Linear(filters * 144, 100) ->
      ReLU -> Linear(100, 10), input (N, 1, 28, 28);
    - ``deep``: 3x3 convs 16-16-pool-32-32-pool-64-64-pool with ReLUs, Linear(1024, 50) ->
      ReLU -> Dropout(0.5) -> Linear(50, 10) -> Dropout(0.5), input (N, 1, 28, 28).
    """
    if model not in MODELS:
        raise ValueError(f"torch_net: model {model!r} unknown; expected one of {MODELS}")
    if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
        raise ValueError(f"torch_net: filters must be a positive int, got {filters!r}")
    from torch import nn

    if model == "mlp":
        return nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    if model == "cnn":
        return nn.Sequential(nn.Conv2d(1, filters, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
                             nn.Flatten(), nn.Linear(filters * 12 * 12, 100), nn.ReLU(),
                             nn.Linear(100, 10))

    def conv(c: int, f: int, pad: int = 1) -> list[Any]:
        return [nn.Conv2d(c, f, 3, padding=pad), nn.ReLU()]
    return nn.Sequential(*conv(1, 16), *conv(16, 16), nn.MaxPool2d(2, 2), *conv(16, 32),
                         *conv(32, 32, 2), nn.MaxPool2d(2, 2), *conv(32, 64), *conv(64, 64),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(64 * 4 * 4, 50),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(50, 10), nn.Dropout(0.5))
