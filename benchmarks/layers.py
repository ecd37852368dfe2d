#!/usr/bin/env python3
"""Per-layer table: forward + backward of one Conv2d / MaxPool2d, xpnet (NumPy) vs PyTorch CPU.

Every conv shape of DeepConvNet and SimpleConvNet, a CIFAR-like 3x32x32 -> 64 3x3 conv and a
64 -> 128 3x3 conv at 16x16, batch 100, float32, and the 2x2 max-pools of both models. xpnet
runs the layer's forward and backward; PyTorch runs ``torch.nn.functional.conv2d`` (or
``max_pool2d``) with autograd, backward from the same output gradient. A layer that is a model's
first computes no input gradient on either side (as in training). Both libraries share the
process, so OpenMP runs with OMP_WAIT_POLICY=PASSIVE (torch's idle threads would otherwise spin
and starve OpenBLAS's). The GEMM floor is the time of
the matmuls the xpnet formulation performs, whole (no blocks, no copies), at its shapes: on the
grid of L = N*(H+p)*(W+p) columns, forward (F, k*k*C+1) @ (k*k*C+1, L), weight gradient
(F, L) @ (L, k*k*C+1), input gradient (C, k*k*F) @ (k*k*F, L), with NumPy's BLAS threads.
The three are timed interleaved, round by round: medians for xpnet and torch, the minimum for
the floor (the least disturbed run: this machine is shared).

    python benchmarks/layers.py --threads 2 [--rounds 15] [--json]
"""

# The timed closures run inside the loop iteration that defines them (late binding is harmless):
# ruff: noqa: B023
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import protocol  # benchmarks/protocol.py

ROOT = Path(__file__).resolve().parents[1]

# (label, C, F, H, k, padding, input gradient)
CONVS = [
    ("deep conv1 1->16 28x28", 1, 16, 28, 3, 1, False),
    ("deep conv2 16->16 28x28", 16, 16, 28, 3, 1, True),
    ("deep conv3 16->32 14x14", 16, 32, 14, 3, 1, True),
    ("deep conv4 32->32 14x14 p2", 32, 32, 14, 3, 2, True),
    ("deep conv5 32->64 8x8", 32, 64, 8, 3, 1, True),
    ("deep conv6 64->64 8x8", 64, 64, 8, 3, 1, True),
    ("simple conv 1->30 5x5 28x28", 1, 30, 28, 5, 0, False),
    ("CIFAR-like 3->64 32x32", 3, 64, 32, 3, 1, False),
    ("64->128 16x16", 64, 128, 16, 3, 1, True),
]
# (label, C, H)
POOLS = [("deep pool1 16x28x28", 16, 28), ("deep pool2 32x16x16", 32, 16),
         ("deep pool3 64x8x8", 64, 8), ("simple pool 30x24x24", 30, 24)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads (default: 2)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (default: 15)")
    p.add_argument("--json", action="store_true", help="last stdout line: all rows as JSON")
    args = p.parse_args()
    protocol.prepare_this_process(args.threads)  # before NumPy loads: see protocol.py
    # torch's OpenMP threads otherwise spin after each op and starve OpenBLAS's threads (two
    # thread pools, one process): both runtimes yield their cores between calls
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    import torch.nn.functional as F

    import xpnet
    torch.set_num_threads(args.threads)
    xpnet.set_backend("numpy")
    rng = np.random.default_rng(0)
    n = args.batch

    def timed(fns: dict, floor: tuple = ("gemm",)) -> dict:
        for fn in fns.values():  # warm-up: workspaces, allocator, torch's kernels
            fn(), fn()
        ts: dict = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                ts[k].append(time.perf_counter() - t0)
        return {k: (min(v) if k in floor else statistics.median(v)) * 1e3
                for k, v in ts.items()}

    rows = []
    for label, c, f, h, k, pad, dx in CONVS:
        layer = xpnet.Conv2d(c, f, k, padding=pad)
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        oh = h + 2 * pad - k + 1
        g = rng.standard_normal((n, f, oh, oh)).astype(np.float32)
        tx, tg = torch.from_numpy(x).requires_grad_(dx), torch.from_numpy(g)
        tw = torch.from_numpy(xpnet.to_numpy(layer.W.data)).requires_grad_(True)
        tb = torch.zeros(f, requires_grad=True)
        kk, m, m_in = c * k * k, n * oh * oh, n * h * h
        path = layer._select_path(xpnet.backend.current().xp).name
        lg = n * (h + pad) * (h + pad) if path == "grid" else m  # the grid's columns
        a_f, b_f = rng.standard_normal((f, kk + 1), dtype=np.float32), rng.standard_normal(
            (kk + 1, lg), dtype=np.float32)
        g_m = rng.standard_normal((f, lg), dtype=np.float32)
        w_t, d_c = rng.standard_normal((c, k * k * f), dtype=np.float32), rng.standard_normal(
            (k * k * f, lg if path == "grid" else m_in), dtype=np.float32)

        def run_xpnet():
            layer.forward(x)
            layer.backward(g, input_grad=dx)

        def run_torch():
            out = F.conv2d(tx, tw, tb, padding=pad)
            out.backward(tg)
            tw.grad = tb.grad = tx.grad = None

        def run_gemm():
            a_f @ b_f
            g_m @ b_f.T
            if dx:
                w_t @ d_c

        t = timed({"xpnet": run_xpnet, "torch": run_torch, "gemm": run_gemm})
        flop = 2 * f * kk * m * 2 + (2 * c * k * k * f * m_in if dx else 0)
        rows.append(dict(layer=label, kind="conv", input_grad=dx, gflop=flop / 1e9,
                         xpnet_ms=t["xpnet"], torch_ms=t["torch"], gemm_floor_ms=t["gemm"],
                         mode=path))
    for label, c, h in POOLS:
        pool = xpnet.MaxPool2d(2)
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        g = rng.standard_normal((n, c, h // 2, h // 2)).astype(np.float32)
        tx, tg = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(g)

        def run_xpnet():
            pool.forward(x)
            pool.backward(g)

        def run_torch():
            F.max_pool2d(tx, 2).backward(tg)
            tx.grad = None

        t = timed({"xpnet": run_xpnet, "torch": run_torch})
        rows.append(dict(layer=label, kind="pool", input_grad=True, gflop=0.0,
                         xpnet_ms=t["xpnet"], torch_ms=t["torch"], gemm_floor_ms=None, mode="-"))

    print(f"| layer (batch {n}, fwd + bwd) | input grad | GFLOP | xpnet ms | torch ms |"
          " xpnet / torch speed | xpnet GFLOP/s | torch GFLOP/s | GEMM floor ms | xpnet path |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        conv = r["kind"] == "conv"
        gfs = (f"{r['gflop'] / r['xpnet_ms'] * 1e3:.0f} | {r['gflop'] / r['torch_ms'] * 1e3:.0f}"
               if conv else "- | -")
        floor = f"{r['gemm_floor_ms']:.2f}" if conv else "-"
        print(f"| {r['layer']} | {'yes' if r['input_grad'] else 'no'} | "
              f"{r['gflop']:.2f} | {r['xpnet_ms']:.2f} | {r['torch_ms']:.2f} | "
              f"{r['torch_ms'] / r['xpnet_ms']:.2f}x | {gfs} | {floor} | {r['mode']} |")
    if args.json:
        print(json.dumps({"rows": rows, "protocol": protocol.runtime_info()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
