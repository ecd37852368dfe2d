#!/usr/bin/env python3
"""Data-parallel throughput on MNIST: images/s, time in Allreduce and bytes per step.

One run trains SimpleConvNet (``--model cnn``) or TwoLayerNet (``--model mlp``) with Adam for
``--steps`` timed steps (after ``--warmup`` untimed ones) on a global batch of ``--batch-size``;
under ``mpiexec -n N`` every rank takes its B/N slice of each global batch from the same
shuffle and the gradients are averaged by :class:`xpnet.distributed.GradientAverager`
(``--bucket-bytes``; default one buffer per dtype). Rank 0 prints one JSON line.

    python benchmarks/distributed_bench.py --model cnn --threads 2 --json
    mpiexec -n 2 python benchmarks/distributed_bench.py --model cnn --threads 1 --json
    python benchmarks/distributed_bench.py --compare      # the BENCHMARKS.md table (driver)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import protocol  # benchmarks/protocol.py

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--batch-size", type=int, default=100, help="global batch (default: 100)")
    p.add_argument("--steps", type=int, default=60, help="timed steps (default: 60)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per rank (default: 1)")
    p.add_argument("--bucket-bytes", type=int, default=None,
                   help="gradient bucket size in bytes (default: one buffer per dtype)")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--data-dir", default=os.environ.get("XPNET_DATA_DIR",
                                                        str(ROOT.parent / "shared" / "data")))
    p.add_argument("--json", action="store_true", help="print one JSON line (rank 0)")
    p.add_argument("--compare", action="store_true",
                   help="driver: run 1 process x 2 threads vs 2 ranks x 1 thread for both "
                        "models, and a bucket-size sweep; print a markdown table")
    p.add_argument("--rounds", type=int, default=2, help="--compare: rounds (median)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    protocol.prepare_this_process(args.threads)  # before NumPy loads: see protocol.py
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import xpnet
    from xpnet import distributed
    from xpnet.data import load_mnist
    from xpnet.models import SimpleConvNet, TwoLayerNet

    comm = distributed.world()
    backend = xpnet.set_backend(args.backend)
    if backend.name == "torch":
        import torch
        torch.set_num_threads(args.threads)
    if args.batch_size % comm.size:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {comm.size} ranks")
    x, y, _, _ = load_mnist(args.data_dir, flatten=args.model == "mlp")
    model = SimpleConvNet(seed=0) if args.model == "cnn" else TwoLayerNet(seed=0)
    opt = xpnet.Adam(model, lr=1e-3)
    averager = distributed.GradientAverager.attach(opt, comm, bucket_bytes=args.bucket_bytes)
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    order = np.random.default_rng(0).permutation(len(y))  # the same on every rank
    local = args.batch_size // comm.size
    total = args.warmup + args.steps

    def step(i: int) -> None:
        start = (i * args.batch_size) % (len(y) - args.batch_size) + comm.rank * local
        idx = order[start:start + local]
        xb, yb = xpnet.to_device(x[idx]), xpnet.to_device(y[idx])
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    for i in range(args.warmup):
        step(i)
    comm.barrier()
    averager.stats.update(steps=0, messages=0, bytes=0, seconds=0.0)
    t0 = time.perf_counter()
    for i in range(args.warmup, total):
        step(i)
    comm.barrier()
    seconds = time.perf_counter() - t0
    steps = max(1, averager.stats["steps"]) if comm.size > 1 else args.steps
    allreduce_s = comm.allreduce_host([averager.stats["seconds"]])[0] / comm.size
    comm.check_identical(model, "after the benchmark")
    probe_ms = 0.0
    if comm.size > 1:  # the Allreduce alone, ranks in step (no waiting for a slower rank)
        bufs = [b.buf for b in averager._buckets]
        comm.barrier()
        t1 = time.perf_counter()
        for _ in range(20):
            for buf in bufs:
                comm.allreduce_(buf)
        probe_ms = 1e3 * (time.perf_counter() - t1) / 20
    return {
        "model": args.model, "ranks": comm.size, "threads_per_rank": args.threads,
        "global_batch": args.batch_size, "steps": args.steps,
        "bucket_bytes": args.bucket_bytes, "buckets": len(averager.buckets()),
        "images_per_s": args.batch_size * args.steps / seconds,
        "ms_per_step": 1e3 * seconds / args.steps,
        "allreduce_ms_per_step": 1e3 * allreduce_s / steps,
        "allreduce_alone_ms": probe_ms,
        "bytes_per_step": averager.stats["bytes"] / steps,
        "messages_per_step": averager.stats["messages"] / steps,
        "parameters": model.num_parameters(), "backend": backend.name,
        "protocol": protocol.runtime_info(),
    }


def compare(args: argparse.Namespace) -> None:
    import statistics
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                           f"{os.environ.get('PATH', '')}")
    me = [sys.executable, str(Path(__file__).resolve()), "--json", "--steps", str(args.steps),
          "--data-dir", args.data_dir, "--backend", args.backend]
    configs = []
    for model in ("cnn", "mlp"):
        configs.append((f"{model} 1 process x 1 thread", [*me, "--model", model,
                                                         "--threads", "1"]))
        configs.append((f"{model} 1 process x 2 threads", [*me, "--model", model,
                                                          "--threads", "2"]))
        configs.append((f"{model} 2 ranks x 1 thread", [mpiexec, "-n", "2", *me, "--model",
                                                        model, "--threads", "1"]))
    for bucket in (4096, 65536, 1 << 20):
        configs.append((f"cnn 2 ranks, buckets of {bucket} B",
                        [mpiexec, "-n", "2", *me, "--model", "cnn", "--threads", "1",
                         "--bucket-bytes", str(bucket)]))
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    env = {k: v for k, v in protocol.child_env().items()
           if not k.startswith(("PMI_", "OMPI_"))}
    for _ in range(args.rounds):  # interleaved rounds: a busy neighbour hits every config
        for name, cmd in configs:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                                 check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print("| run | images/s | ms/step | Allreduce ms/step (incl. waiting) | Allreduce alone ms "
          "| bytes/step | messages/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        print(f"| {name} | {med('images_per_s'):,.0f} | {med('ms_per_step'):.1f} | "
              f"{med('allreduce_ms_per_step'):.2f} | {med('allreduce_alone_ms'):.2f} | "
              f"{med('bytes_per_step'):,.0f} | "
              f"{med('messages_per_step'):.0f} |")
    print(json.dumps(results), file=sys.stderr)


def main() -> None:
    args = parse()
    if args.compare:
        compare(args)
        return
    result = run(args)
    from xpnet import distributed
    if distributed.world().is_root:
        print(json.dumps(result) if args.json else result, flush=True)


if __name__ == "__main__":
    main()
