#!/usr/bin/env python3
"""Training throughput on a GPU, xpnet against PyTorch under one protocol (images/s, INFO only).

    python3 release/gpu_bench.py --framework xpnet --backend cupy --model cnn --json --data-dir D
    python3 release/gpu_bench.py --framework torch --device cuda:0 --model cnn --json --data-dir D

The protocol, the same for both frameworks (this file is its only copy):
  * the MNIST training images, shuffled once with ``--seed`` on the host, are copied to the
    device once; each step trains on the next ``--batch-size`` rows of that resident array (no
    host-to-device copy and no host sync inside the timed loop);
  * ``--warmup-steps`` steps first (kernel compilation, cuDNN autotuning), not timed;
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
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", required=True, help="folder holding mnist/ (or the .gz files)")
    p.add_argument("--json", action="store_true", help="print one line of JSON only")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup_steps < 0:
        p.error(f"--warmup-steps must be at least 0, got {args.warmup_steps}")
    return args


def host_data(args: argparse.Namespace):
    """Shuffled float32 images and int64 labels: enough rows for one pass of warm-up + steps."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from xpnet.data import load_mnist

    x, y, _, _ = load_mnist(args.data_dir, flatten=args.model == "mlp", download=False,
                            progress=False)
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


def measure(step, x, y, args: argparse.Namespace, timer: Timer) -> dict:
    """The protocol: warm-up steps, then ``args.steps`` timed steps over resident slices."""
    bs, n = args.batch_size, int(x.shape[0])
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


def run_xpnet(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import xpnet
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet

    b = xpnet.set_backend(args.backend, args.device)
    xh, yh = host_data(args)
    x, y = xpnet.to_device(xh), xpnet.to_device(yh)
    model = {"mlp": TwoLayerNet, "cnn": SimpleConvNet, "deep": DeepConvNet}[args.model](
        seed=args.seed)
    opt = xpnet.Adam(model, lr=1e-3)
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)  # no host sync on the labels

    def step(xb, yb):
        loss = loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return loss

    if b.name == "cupy":
        import cupy
        timer = Timer("cuda-event", cupy.cuda.Event, elapsed_ms=cupy.cuda.get_elapsed_time)
        device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        device = device.decode() if isinstance(device, bytes) else str(device)
    else:
        timer = Timer("perf_counter", sync=lambda: None)
        device = str(b.device)
    out = measure(step, x, y, args, timer)
    out["last_loss"] = float(xpnet.to_numpy(out["last_loss"]))
    return {"framework": "xpnet", "backend": b.name, "backend_version": b.version,
            "device": device, "xpnet_device": str(b.device), "model": args.model, **out}


def run_torch(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    dev = torch.device(args.device or "cuda:0")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    xh, yh = host_data(args)
    x, y = torch.from_numpy(xh).to(dev), torch.from_numpy(yh).to(dev)
    torch.manual_seed(args.seed)
    if args.model == "mlp":
        net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    elif args.model == "cnn":
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
    net = net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(xb, yb):
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if dev.type == "cuda":
        timer = Timer("cuda-event", lambda: torch.cuda.Event(enable_timing=True),
                      elapsed_ms=lambda a, b: a.elapsed_time(b))
        device = torch.cuda.get_device_name(dev)
    else:
        timer = Timer("perf_counter", sync=lambda: None)
        device = "cpu"
    out = measure(step, x, y, args, timer)
    out["last_loss"] = float(out["last_loss"].cpu())
    return {"framework": "torch", "backend": f"torch-{dev.type}", "backend_version":
            torch.__version__, "device": device, "model": args.model, **out}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = run_xpnet(args) if args.framework == "xpnet" else run_torch(args)
    if not math.isfinite(out["last_loss"]):
        print(f"gpu_bench: the loss is {out['last_loss']} after training", file=sys.stderr)
        return 1
    print(json.dumps(out) if args.json else "\n".join(f"{k:>16}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
