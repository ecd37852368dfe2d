#!/usr/bin/env python3
"""Thread policies on a quiet and a busy machine, A/B in one process: training steps timed in
blocks that alternate the policy and whether one core is taken by a busy loop.

For xpnet (NumPy backend) the policies are fixed thread counts (BLAS through threadpoolctl,
xpnet's copies through XPNET_NUM_THREADS) and ``adaptive`` (:func:`xpnet.threads.adapt_threads`
at the block's start, as at fit start); for torch, its own thread count. The slowdown of a
policy is its median step time with the busy core over its median without. Blocks are
interleaved round by round (quiet/busy x policy, the order rotated each round), so a
neighbour's load hits every variant.

    python benchmarks/threads_ab.py --side xpnet --model deep --rounds 5
    python benchmarks/threads_ab.py --side torch --model deep --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import protocol  # benchmarks/protocol.py

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=["xpnet", "torch"], default="xpnet",
                   help="which library trains (default: xpnet)")
    p.add_argument("--model", choices=["deep", "cnn", "mlp"], default="deep",
                   help="model (default: deep)")
    p.add_argument("--policies", nargs="+", default=["2", "1", "adaptive"],
                   help="xpnet: thread counts and/or 'adaptive'; torch: thread counts "
                        "(default: 2 1 adaptive)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per block (default: 8)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    args = p.parse_args()
    protocol.prepare_this_process()
    for var in ("XPNET_NUM_THREADS", *protocol.THREAD_VARIABLES):  # the policies decide
        os.environ.pop(var, None)
    sys.path.insert(0, str(ROOT))
    import numpy as np
    rng = np.random.default_rng(0)
    shape = (args.batch, 784) if args.model == "mlp" else (args.batch, 1, 28, 28)
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    policies = [q for q in args.policies if not (args.side == "torch" and q == "adaptive")]
    step, set_policy = (torch_side if args.side == "torch" else xpnet_side)(args.model, x, y)

    def block(policy: str) -> tuple[float, int | None]:
        chosen = set_policy(policy)
        step()  # the first step after a change warms the new thread setting
        t = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            t.append(time.perf_counter() - t0)
        return statistics.median(t), chosen

    for q in policies:
        block(q)
    times: dict[tuple[str, bool], list[float]] = {(q, b): [] for q in policies
                                                  for b in (False, True)}
    chosen: dict[tuple[str, bool], list] = {k: [] for k in times}
    loads = []
    for rnd in range(args.rounds):
        # rotate the policies and alternate quiet/busy first, so no variant always runs in
        # the same place of a round
        order = policies[rnd % len(policies):] + policies[:rnd % len(policies)]
        for busy in ((False, True) if rnd % 2 == 0 else (True, False)):
            with (protocol.busy_core(max_seconds=600) if busy
                  else contextlib.nullcontext()):
                if busy:
                    time.sleep(0.3)  # the loop is spinning before the first block
                for q in order:
                    ms, c = block(q)
                    times[q, busy].append(ms)
                    chosen[q, busy].append(c)
                    print(f"round {rnd + 1} {'busy' if busy else 'quiet'} {q}: "
                          f"{ms * 1e3:.1f} ms (threads {c})", file=sys.stderr, flush=True)
            loads.append(protocol.load_average())
    rows = []
    print("| side | model | policy | quiet step ms | busy step ms | busy / quiet | "
          "threads chosen (quiet; busy) |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for q in policies:
        quiet = statistics.median(times[q, False]) * 1e3
        busy = statistics.median(times[q, True]) * 1e3
        rows.append({"policy": q, "quiet_ms": quiet, "busy_ms": busy, "slowdown": busy / quiet,
                     "quiet_runs_ms": [t * 1e3 for t in times[q, False]],
                     "busy_runs_ms": [t * 1e3 for t in times[q, True]],
                     "chosen_quiet": chosen[q, False], "chosen_busy": chosen[q, True]})
        print(f"| {args.side} | {args.model} | {q} | {quiet:.1f} | {busy:.1f} | "
              f"{busy / quiet:.2f}x | {chosen[q, False]}; {chosen[q, True]} |")
    print(json.dumps({"side": args.side, "model": args.model, "rounds": args.rounds,
                      "steps": args.steps, "rows": rows, "loads": loads,
                      "protocol": protocol.runtime_info()}))
    return 0


def xpnet_side(model_name: str, x, y):
    from threadpoolctl import threadpool_limits

    import xpnet
    from xpnet import threads
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet

    xpnet.set_backend("numpy")
    model = {"deep": DeepConvNet, "cnn": SimpleConvNet, "mlp": TwoLayerNet}[model_name](seed=0)
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    opt = xpnet.Adam(model, lr=1e-3)

    def step() -> None:
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    def set_policy(policy: str) -> int | None:
        if policy == "adaptive":
            os.environ.pop("XPNET_NUM_THREADS", None)
            return threads.adapt_threads()
        n = int(policy)
        os.environ["XPNET_NUM_THREADS"] = str(n)
        threadpool_limits(limits=n, user_api="blas")
        return n

    return step, set_policy


def torch_side(model_name: str, x, y):
    import torch
    import torch.nn.functional as F
    from torch_nets import torch_net  # benchmarks/torch_nets.py

    torch.manual_seed(0)
    net = torch_net(model_name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        opt.step()

    def set_policy(policy: str) -> int:
        torch.set_num_threads(int(policy))
        return int(policy)

    return step, set_policy


if __name__ == "__main__":
    sys.exit(main())
