#!/usr/bin/env python3
"""Paired training steps: xpnet and PyTorch step by step, alternating, on the same machine state.

Each side runs in its own long-lived process (under the protocol's environment), builds its
model once, warms up, and then runs one training step (forward, loss, backward, Adam) each time
it is told to. The steps alternate side by side, with a short gap between them so that no side
inherits another's busy threads. The ratio of each pair (PyTorch's step time over the other
side's) is taken pair by pair, so a host whose speed drifts from minute to minute (a shared VM
that reports no steal time) moves both sides of a pair alike. Whole-run benchmarks
(``run.py``) give each side several seconds alone, and on such a host a run can land in a slow
stretch that the other side's run misses.

This complements ``run.py``: it times only the step on one fixed batch of synthetic data (no
data loading, no evaluation), so its img/s is not an epoch's.

    python benchmarks/paired_steps.py --model deep --pairs 100 [--sides xpnet-numpy torch]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import protocol  # benchmarks/protocol.py

HERE = Path(__file__).resolve().parent
SIDES = ("xpnet-numpy", "xpnet-torch", "torch")
MODELS = ("deep", "cnn", "mlp")


# ------------------------------------------------------------------ the worker (one side)
def _builder(side: str, model: str, batch: int) -> Any:
    """A function that runs one training step of ``model`` on ``side``, on a fixed batch."""
    import numpy as np
    rng = np.random.default_rng(0)
    shape = (batch, 784) if model == "mlp" else (batch, 1, 28, 28)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if side == "torch":
        import torch
        from torch_nets import torch_net
        net = torch_net(model)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step() -> None:
            opt.zero_grad()
            loss_fn(net(xt), yt).backward()
            opt.step()
        return torch_step
    sys.path.insert(0, str(HERE.parent))
    import xpnet
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet
    xpnet.set_backend(side.removeprefix("xpnet-"))
    net = {"deep": DeepConvNet, "cnn": SimpleConvNet, "mlp": TwoLayerNet}[model]()
    opt = xpnet.Adam(net, lr=1e-3)
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    xb, yb = xpnet.to_device(x), xpnet.to_device(y)

    def xpnet_step() -> None:
        loss_fn.forward(net.forward(xb), yb)
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return xpnet_step


def worker(side: str, model: str, batch: int, warmup: int) -> int:
    """Build, warm up, report readiness with the protocol's runtime record, then time one step
    per line read from stdin (until stdin closes)."""
    step = _builder(side, model, batch)
    for _ in range(warmup):
        step()
    print(json.dumps({"ready": side, "protocol": protocol.runtime_info()}), flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        step()
        print(time.perf_counter() - t, flush=True)
    return 0


# ------------------------------------------------------------------ pairing and summary
def summarize(times: Mapping[str, Sequence[float]], ref: str = "torch",
              window: int = 20) -> dict[str, Any]:
    """Per side: the median step (ms); and for every side
    but ``ref``, the median over pairs of ``ref``'s step time divided by the side's (its speed
    relative to ``ref``: > 1 is faster), overall and per window of ``window`` pairs."""
    if ref not in times:
        raise ValueError(f"summarize: the reference side {ref!r} has no times; "
                         f"sides: {sorted(times)}")
    counts = {len(v) for v in times.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"summarize: every side needs the same, non-zero number of steps; "
                         f"got {({k: len(v) for k, v in times.items()})}")
    out: dict[str, Any] = {}
    for side, ts in times.items():
        entry: dict[str, Any] = {"median_ms": round(1e3 * statistics.median(ts), 3)}
        if side != ref:
            ratios = [r / t for r, t in zip(times[ref], ts)]
            entry["speed_vs_ref"] = round(statistics.median(ratios), 3)
            entry["windows"] = [round(statistics.median(ratios[i:i + window]), 3)
                                for i in range(0, len(ratios), window)]
        out[side] = entry
    return out


def _start(side: str, args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    cmd = [sys.executable, __file__, "--worker", side, "--model", args.model,
           "--batch", str(args.batch), "--warmup", str(args.warmup)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=protocol.child_env(args.threads), cwd=HERE)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"paired_steps: the {side} worker exited before it was ready "
                           f"(exit code {proc.wait()})")
    return proc, json.loads(line)


def _step(proc: subprocess.Popen[str], side: str) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("step\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"paired_steps: the {side} worker died (exit code {proc.wait()})")
    return float(line)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the workers, alternate their steps ``args.pairs`` times, stop them."""
    procs: dict[str, subprocess.Popen[str]] = {}
    ready: dict[str, Any] = {}
    load_before = protocol.load_average()
    try:
        for side in args.sides:
            procs[side], ready[side] = _start(side, args)
        times: dict[str, list[float]] = {side: [] for side in args.sides}
        for i in range(args.pairs):
            # alternate the order too: neither side always runs first after the gap
            for side in (args.sides if i % 2 == 0 else args.sides[::-1]):
                time.sleep(args.gap)
                times[side].append(_step(procs[side], side))
    finally:
        for proc in procs.values():
            if proc.stdin:
                proc.stdin.close()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = summarize(times, ref="torch", window=args.window)
    for entry in summary.values():
        entry["images_per_s"] = round(args.batch * 1e3 / entry["median_ms"], 1)
    return {"model": args.model, "batch": args.batch, "pairs": args.pairs, "gap_s": args.gap,
            "threads": args.threads, "sides": list(args.sides), "summary": summary,
            "times_s": times, "protocol": {s: r["protocol"] for s, r in ready.items()},
            "load_before": load_before, "load_after": protocol.load_average(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="deep", help="model (default: deep)")
    p.add_argument("--pairs", type=int, default=100, help="steps per side (default: 100)")
    p.add_argument("--gap", type=float, default=0.15,
                   help="seconds between steps (default: 0.15)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    p.add_argument("--threads", type=int, default=2, help="threads for all (default: 2)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps (default: 3)")
    p.add_argument("--window", type=int, default=20, help="pairs per window (default: 20)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=["xpnet-numpy", "torch"],
                   help="sides to pair; must include torch (default: xpnet-numpy torch)")
    p.add_argument("--json", type=Path, help="also write the record here")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.batch, args.warmup)
    for name in ("pairs", "batch", "threads", "window"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.gap < 0 or args.warmup < 0:
        p.error("--gap and --warmup must not be negative")
    if "torch" not in args.sides or len(set(args.sides)) != len(args.sides):
        p.error("--sides must name torch (the reference) and no side twice")
    res = run(args)
    print(f"{res['model']}, batch {res['batch']}, {res['pairs']} pairs, gap {res['gap_s']} s, "
          f"{res['threads']} threads; load {res['load_before']} -> {res['load_after']}")
    for side, entry in res["summary"].items():
        rel = ""
        if "speed_vs_ref" in entry:
            rel = (f"  {entry['speed_vs_ref']:.2f}x torch per pair (windows: "
                   f"{' / '.join(f'{w:.2f}' for w in entry['windows'])})")
        print(f"{side:>12}: {entry['median_ms']:8.1f} ms/step  "
              f"{entry['images_per_s']:>10,.0f} img/s{rel}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
