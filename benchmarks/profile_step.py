#!/usr/bin/env python3
"""Per-layer profile of one training step (forward, loss, backward, Adam), xpnet on NumPy.

Times every layer's forward and backward separately over ``--steps`` steps after 3 warm-up
steps and prints the mean per layer and the median step time. ``--root`` profiles another
checkout of xpnet (e.g. an older commit unpacked with ``git archive``) for a before/after table.

    python benchmarks/profile_step.py --model deep --batch 100 --threads 2
    python benchmarks/profile_step.py --model deep --root /tmp/xpnet-old
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import protocol  # benchmarks/protocol.py


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["deep", "cnn", "mlp"], default="deep",
                   help="model (default: deep)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default: 2)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                   help="the xpnet checkout to profile (default: this one)")
    args = p.parse_args()
    protocol.prepare_this_process(args.threads)  # before NumPy loads: see protocol.py
    sys.path.insert(0, str(args.root))
    import numpy as np
    print(f"protocol: {json.dumps(protocol.runtime_info())}\n")

    import xpnet
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet

    xpnet.set_backend("numpy")
    model = {"deep": DeepConvNet, "cnn": SimpleConvNet, "mlp": TwoLayerNet}[args.model]()
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    opt = xpnet.Adam(model, lr=1e-3)
    rng = np.random.default_rng(0)
    shape = (args.batch, 784) if args.model == "mlp" else (args.batch, 1, 28, 28)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    layers = model.layers
    fwd, bwd = [0.0] * len(layers), [0.0] * len(layers)
    other: list[float] = []

    def step(timed: bool) -> float:
        t_step = time.perf_counter()
        h = x
        for i, layer in enumerate(layers):
            t = time.perf_counter()
            h = layer.forward(h)
            fwd[i] += (time.perf_counter() - t) * timed
        t = time.perf_counter()
        loss_fn.forward(h, y)
        d = loss_fn.backward()
        rest = time.perf_counter() - t
        for i in range(len(layers) - 1, -1, -1):
            t = time.perf_counter()
            if i == 0:  # the first layer computes no input gradient, as in training
                layers[0].backward(d, input_grad=False)
            else:
                d = layers[i].backward(d)
            bwd[i] += (time.perf_counter() - t) * timed
        t = time.perf_counter()
        opt.step()
        rest += time.perf_counter() - t
        if timed:
            other.append(rest)
        return time.perf_counter() - t_step

    for _ in range(3):
        step(False)
    steps = [step(True) for _ in range(args.steps)]
    s = args.steps
    print("| layer | forward ms | backward ms |\n| --- | --- | --- |")
    for i, layer in enumerate(layers):
        print(f"| {i} {repr(layer).splitlines()[0]} | {fwd[i] / s * 1e3:.2f} | "
              f"{bwd[i] / s * 1e3:.2f} |")
    print(f"| loss + Adam | {statistics.mean(other) * 1e3:.2f} | |")
    med = statistics.median(steps)
    print(f"\nstep: median {med * 1e3:.1f} ms ({args.batch / med:,.0f} img/s), "
          f"sum of layer means {(sum(fwd) + sum(bwd)) / s * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
