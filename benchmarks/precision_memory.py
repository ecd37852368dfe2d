"""Peak host memory of one training forward + backward of SimpleConvNet (NumPy), float32
against mixed16, measured with tracemalloc (NumPy reports its array buffers to it).

    python benchmarks/precision_memory.py [--batch 100]

Prints, per policy, the peak of memory allocated during the step above what the model held
before it: the activations kept for backward, the gradients and the temporaries.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

import xpnet
from xpnet.models import SimpleConvNet
from xpnet.train import train_step


def peak(policy: str, batch: int) -> float:
    """MiB allocated at the step's peak above the state before it."""
    xpnet.set_backend("numpy")
    model = SimpleConvNet(seed=0)
    x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    y = np.arange(batch) % 10
    loss = xpnet.SoftmaxCrossEntropy()
    with xpnet.autocast(policy):  # a first step: workspaces and gradients exist afterwards
        train_step(model, loss, None, x, y)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with xpnet.autocast(policy):
        train_step(model, loss, None, x, y)
    top = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (top - base) / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    args = parser.parse_args()
    for policy in ("float32", "mixed16"):
        print(f"{policy:8s} batch {args.batch}: step peak {peak(policy, args.batch):7.1f} MiB")


if __name__ == "__main__":
    main()
