#!/usr/bin/env python3
"""Training throughput on a GPU, xpnet against PyTorch under one protocol (images/s, INFO only).

    python3 release/gpu_bench.py --framework xpnet --backend cupy --model mlp cnn deep \
        --batch-size 100 1000 --json --data-dir D
    python3 release/gpu_bench.py --framework torch --device cuda:0 --model cnn --json --data-dir D

The protocol, the same for both frameworks (this file is its only copy):
  * the MNIST training images, shuffled once with ``--seed`` on the host, are copied to the
    device once; each step trains on the next ``--batch-size`` rows of that resident array (no
    host-to-device copy and no host sync inside the timed loop);
  * ``--warmup-steps`` steps first (kernel compilation, cuDNN autotuning), not timed;
  * each model and batch size is a fresh model in the same process (one import, one copy of the
    data on the device);
  * then ``--steps`` steps between two CUDA events (``time.perf_counter`` around a synchronised
    loop on a CPU device, for the self-test), reported as images per second;
  * models: mlp = TwoLayerNet (784-100-10), cnn = SimpleConvNet (conv30x5x5-relu-pool2-fc100-
    relu-fc10), deep = DeepConvNet (the textbook's 3x3 convs 16-16-32-32-64-64, fc50, dropout,
    fc10); float32, Adam 1e-3, softmax cross-entropy.
The loss of the last step is read once, after the timing, and must be finite.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mlp", "cnn", "deep")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=("xpnet", "torch"), required=True)
    p.add_argument("--backend", default="cupy", help="xpnet backend (default cupy)")
    p.add_argument("--device", default=None,
                   help="device: torch's (default cuda:0) or xpnet's (default the backend's)")
    p.add_argument("--model", choices=MODELS, nargs="+", default=["cnn"])
    p.add_argument("--batch-size", type=int, nargs="+", default=[100])
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", required=True, help="folder holding mnist/ (or the .gz files)")
    p.add_argument("--json", action="store_true", help="print one line of JSON only")
    args = p.parse_args(argv)
    if args.steps < 1 or min(args.batch_size) < 1:
        p.error(f"--steps and --batch-size must be at least 1, got {args.steps} and "
                f"{args.batch_size}")
    if args.warmup_steps < 0:
        p.error(f"--warmup-steps must be at least 0, got {args.warmup_steps}")
    return args


def host_data(args: argparse.Namespace):
    """The shuffled training set: float32 images (N, 1, 28, 28), int64 labels."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from xpnet.data import load_mnist

    x, y, _, _ = load_mnist(args.data_dir, download=False, progress=False)
    order = np.random.default_rng(args.seed).permutation(len(x))
    return np.ascontiguousarray(x[order], dtype=np.float32), y[order].astype(np.int64)


class Timer:
    """CUDA events on a CUDA device, else perf_counter around a synchronised loop."""

    def __init__(self, kind: str, event=None, sync=None, elapsed_ms=None):
        self.kind, self._event, self._sync, self._elapsed_ms = kind, event, sync, elapsed_ms

    def __enter__(self) -> Timer:
        if self._event is None:
            self._sync()
            self._t0 = time.perf_counter()
        else:
            self._start, self._end = self._event(), self._event()
            self._start.record()
        return self

    def __exit__(self, *exc) -> None:
        if self._event is None:
            self._sync()
            self.seconds = time.perf_counter() - self._t0
        else:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._elapsed_ms(self._start, self._end) / 1000.0


def measure(step, x, y, args: argparse.Namespace, bs: int, timer: Timer) -> dict:
    """The protocol: warm-up steps, then ``args.steps`` timed steps over resident slices."""
    n = int(x.shape[0])
    if n < bs:
        raise SystemExit(f"--batch-size {bs} is larger than the {n} training images")
    starts = [(i * bs) % (n - bs + 1) for i in range(args.warmup_steps + args.steps)]
    loss = None
    for s in starts[:args.warmup_steps]:
        loss = step(x[s:s + bs, ...], y[s:s + bs])
    with timer:
        for s in starts[args.warmup_steps:]:
            loss = step(x[s:s + bs, ...], y[s:s + bs])
    return {"steps": args.steps, "warmup_steps": args.warmup_steps, "batch_size": bs,
            "seconds": round(timer.seconds, 4), "timer": timer.kind,
            "images_per_s": round(args.steps * bs / timer.seconds, 1), "last_loss": loss}


def run_xpnet(args: argparse.Namespace) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    import xpnet
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet

    b = xpnet.set_backend(args.backend, args.device)
    xh, yh = host_data(args)
    x, y = xpnet.to_device(xh), xpnet.to_device(yh)
    flat = b.xp.reshape(x, (x.shape[0], 784))
    if b.name == "cupy":
        import cupy
        timer = Timer("cuda-event", cupy.cuda.Event, elapsed_ms=cupy.cuda.get_elapsed_time)
        device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        device = device.decode() if isinstance(device, bytes) else str(device)
    else:
        timer = Timer("perf_counter", sync=lambda: None)
        device = str(b.device)
    runs = []
    for name in args.model:
        for bs in args.batch_size:
            model = {"mlp": TwoLayerNet, "cnn": SimpleConvNet, "deep": DeepConvNet}[name](
                seed=args.seed)
            opt = xpnet.Adam(model, lr=1e-3)
            loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)  # no host sync on labels

            def step(xb, yb, model=model, opt=opt, loss_fn=loss_fn):
                loss = loss_fn.forward(model.forward(xb), yb)
                model.backward(loss_fn.backward(), input_grad=False)
                opt.step()
                return loss

            out = measure(step, flat if name == "mlp" else x, y, args, bs, timer)
            out["last_loss"] = float(xpnet.to_numpy(out["last_loss"]))
            runs.append({"framework": "xpnet", "backend": b.name, "backend_version": b.version,
                         "device": device, "xpnet_device": str(b.device), "model": name, **out})
    return runs


def torch_model(name: str):
    """The three models in PyTorch, He-normal weights and zero biases as xpnet's."""
    from torch import nn

    if name == "mlp":
        net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    elif name == "cnn":
        net = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                            nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
    else:  # pools before the ReLUs, as xpnet's DeepConvNet (the same function)
        def conv(cin, cout, pad=1):
            return nn.Conv2d(cin, cout, 3, padding=pad)
        net = nn.Sequential(conv(1, 16), nn.ReLU(), conv(16, 16), nn.MaxPool2d(2), nn.ReLU(),
                            conv(16, 32), nn.ReLU(), conv(32, 32, 2), nn.MaxPool2d(2), nn.ReLU(),
                            conv(32, 64), nn.ReLU(), conv(64, 64), nn.MaxPool2d(2), nn.ReLU(),
                            nn.Flatten(), nn.Linear(64 * 4 * 4, 50), nn.ReLU(), nn.Dropout(0.5),
                            nn.Linear(50, 10), nn.Dropout(0.5))
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def run_torch(args: argparse.Namespace) -> list[dict]:
    import torch
    import torch.nn.functional as F

    dev = torch.device(args.device or "cuda:0")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        timer = Timer("cuda-event", lambda: torch.cuda.Event(enable_timing=True),
                      elapsed_ms=lambda a, b: a.elapsed_time(b))
        device = torch.cuda.get_device_name(dev)
    else:
        timer = Timer("perf_counter", sync=lambda: None)
        device = "cpu"
    xh, yh = host_data(args)
    x, y = torch.from_numpy(xh).to(dev), torch.from_numpy(yh).to(dev)
    flat = x.reshape(x.shape[0], 784)
    runs = []
    for name in args.model:
        for bs in args.batch_size:
            torch.manual_seed(args.seed)
            net = torch_model(name).to(dev)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

            def step(xb, yb, net=net, opt=opt):
                loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss.detach()

            out = measure(step, flat if name == "mlp" else x, y, args, bs, timer)
            out["last_loss"] = float(out["last_loss"].cpu())
            runs.append({"framework": "torch", "backend": f"torch-{dev.type}",
                         "backend_version": torch.__version__, "device": device, "model": name,
                         **out})
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = run_xpnet(args) if args.framework == "xpnet" else run_torch(args)
    for r in runs:
        if not math.isfinite(r["last_loss"]):
            print(f"gpu_bench: {r['model']} at batch {r['batch_size']}: the loss is "
                  f"{r['last_loss']} after training", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"runs": runs}))
    else:
        for r in runs:
            print(f"{r['framework']} {r['model']} batch {r['batch_size']}: "
                  f"{r['images_per_s']:,.0f} images/s ({r['timer']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
