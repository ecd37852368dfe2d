#!/usr/bin/env python3
"""DeepConvNet's GEMM floor on NumPy: the three products of every conv layer (forward, weight
gradient, input gradient) at batch 100, each in every orientation BLAS can be given, whole
matrices, no copies; the fastest orientation per product is the floor of any im2col/grid-style
formulation that multiplies these matrices with NumPy's BLAS.

Orientations (P = N*OH*OW output positions, K = 9*C, F filters): forward (F,K)@(K,P) or
(P,K)@(K,F); weight gradient (F,P)@(P,K), (K,P)@(P,F) and their transposed-operand variants;
input gradient as col2im's product (K,F)@(F,P) or (P,F)@(F,K), or as the convolution of the
output gradient with the flipped kernel (C,9F)@(9F,P) or (P,9F)@(9F,C) (xpnet's grid form; same
FLOPs, other shapes). Interleaved rounds, median per variant. Positions are the output's (the
grid adds 0-27% discarded ones, not counted here).

    python benchmarks/conv_gemm_floor.py --threads 2 [--rounds 15]
"""

# The timed closures run inside the loop iteration that defines them (late binding is harmless):
# ruff: noqa: B023
from __future__ import annotations

import argparse
import json
import statistics
import time

import protocol  # benchmarks/protocol.py

# (name, C, F, output positions per image)
LAYERS = [("conv1 1->16 28x28", 1, 16, 784), ("conv2 16->16 28x28", 16, 16, 784),
          ("conv3 16->32 14x14", 16, 32, 196), ("conv4 32->32 14x14 p2", 32, 32, 256),
          ("conv5 32->64 8x8", 32, 64, 64), ("conv6 64->64 8x8", 64, 64, 64)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default: 2)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default: 15)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    args = p.parse_args()
    protocol.prepare_this_process(args.threads)  # before NumPy loads: see protocol.py
    import numpy as np
    print(f"protocol: {json.dumps(protocol.runtime_info())}\n")

    rng = np.random.default_rng(0)
    total = 0.0
    print("| layer | GFLOP (3 products) | forward ms | weight grad ms | input grad ms |"
          " floor ms | GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c, f, pos in LAYERS:
        k, n = 9 * c, args.batch * pos
        def rand(*shape):
            return rng.standard_normal(shape, dtype=np.float32)

        w, cols, d = rand(f, k), rand(k, n), rand(f, n)
        w_t, cols_t, d_t = (np.ascontiguousarray(m.T) for m in (w, cols, d))
        w_flip, dcols = rand(c, 9 * f), rand(9 * f, n)  # input gradient as a convolution
        w_flip_t, dcols_t = np.ascontiguousarray(w_flip.T), np.ascontiguousarray(dcols.T)
        variants = {
            "fwd": [lambda: w @ cols, lambda: cols_t @ w_t],
            "dw": [lambda: d @ cols_t, lambda: d @ cols.T, lambda: cols @ d_t,
                   lambda: cols_t.T @ d_t],
            "dx": [lambda: w_t @ d, lambda: d_t @ w, lambda: w_flip @ dcols,
                   lambda: dcols_t @ w_flip_t] if c > 1 else [],
        }
        times = {(kind, i): [] for kind, fs in variants.items() for i in range(len(fs))}
        for fs in variants.values():
            for fn in fs:
                fn()
        for _ in range(args.rounds):
            for kind, fs in variants.items():
                for i, fn in enumerate(fs):
                    t = time.perf_counter()
                    fn()
                    times[(kind, i)].append(time.perf_counter() - t)
        best = {kind: min((statistics.median(times[(kind, i)]) for i in range(len(fs))),
                          default=0.0) * 1e3 for kind, fs in variants.items()}
        floor = sum(best.values())
        total += floor
        gflop = 2 * f * k * n * (3 if c > 1 else 2) / 1e9
        print(f"| {name} | {gflop:.2f} | {best['fwd']:.2f} | {best['dw']:.2f} | "
              f"{best['dx']:.2f} | {floor:.2f} | {gflop / floor * 1e3:.0f} |")
    print(f"\nconv GEMM floor per step of {args.batch}: {total:.1f} ms "
          f"({args.batch / total * 1e3:,.0f} img/s if nothing else ran)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
