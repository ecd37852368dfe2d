#!/usr/bin/env python3
"""How a training step's cost grows: step time against batch size and against conv width, for
xpnet on NumPy, xpnet on torch, and plain PyTorch.

A point is one model at one batch size and width: a fixed number of training steps (forward +
backward + Adam update, float32, synthetic MNIST-shaped data: random images in [0, 1) and
random labels) after a few warm-up steps on the same model. Its figure is the loop's wall time
over its steps (ms/step) and images/s. The points:

- **batch**: 32, 64, 128, 256, 512 and 1024 images per step on TwoLayerNet (``mlp``),
  SimpleConvNet (``cnn``) and DeepConvNet (``deep``);
- **width**: SimpleConvNet with 30, 60 and 120 filters (channels doubled twice) at batch 100.

Each point's step count is fixed by its model, batch and width alone (the same for every side),
sized so that a point takes about 1-3 s; ``--work`` scales it (at least 2 steps a point).

The sides are ``xpnet-numpy``, ``xpnet-torch`` (xpnet's model code on its torch backend) and
``torch`` (the same architecture as an ``nn.Sequential`` with autograd and ``torch.optim.Adam``,
benchmarks/torch_nets.py). Each side measures one group of points (a model's batch sizes, or the
widths) in its own process, started through benchmarks/protocol.py; the sides are interleaved
group by group, round by round, their order rotated each round.

Protocol (benchmarks/protocol.py): every side runs without OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE, at ``--threads`` threads; each run's JSON records the BLAS library, kernel and
threads, torch's threads and the load average before and after it. A round in which any run
started or ended with a 1-minute load average above the core count is flagged and excluded from
the medians (its figures stay in the JSON). Peak RSS is the process's peak after each point;
the points of a run go from the smallest to the largest, so it is close to that point's own.

The real run (an estimated 6-8 minutes on a quiet 2-core machine, 3 rounds):

    python benchmarks/scaling.py --rounds 3 --json scaling.json

A smoke run (every path, no meaningful figures):

    python benchmarks/scaling.py --rounds 1 --work 0.001 --batches 32 64 --widths 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import protocol  # benchmarks/protocol.py: the one copy of the protocol

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("xpnet-numpy", "xpnet-torch", "torch")
LABELS = {"xpnet-numpy": "xpnet NumPy", "xpnet-torch": "xpnet torch backend",
          "torch": "PyTorch"}
MODELS = ("mlp", "cnn", "deep")
MODEL_NAMES = {"mlp": "TwoLayerNet", "cnn": "SimpleConvNet", "deep": "DeepConvNet"}
BATCHES = (32, 64, 128, 256, 512, 1024)
#: SimpleConvNet's filter count at width x1
BASE_FILTERS = 30
WIDTHS = (1, 2, 4)
#: images per point at width x1 (the step count is this over the batch size): about 1-3 s
#: per point on a 2-core machine
IMAGES_PER_POINT = {"mlp": 32000, "cnn": 4000, "deep": 1000}
MIN_STEPS = 2


def point_steps(model: str, batch: int, width: int = 1, work: float = 1.0) -> tuple[int, int]:
    """The (timed steps, warm-up steps) of a point: ``IMAGES_PER_POINT[model] * work`` images
    over the batch, divided by the width (a wider conv costs about that much more per image),
    at least :data:`MIN_STEPS`; warm-up a tenth of that, at least 1 (the first step allocates
    workspaces and optimizer state; a large batch's step costs seconds)."""
    steps = max(MIN_STEPS, round(IMAGES_PER_POINT[model] * work / (batch * width)))
    return steps, max(1, steps // 10)


def plan(models: Sequence[str], batches: Sequence[int], widths: Sequence[int],
         width_batch: int, work: float) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The groups of a round, each (group, model, points): one ``batch`` group per model and
    one ``width`` group (SimpleConvNet at ``width_batch``). A point: model, batch, width,
    filters (SimpleConvNet's; None for the others), steps, warmup."""
    groups = []
    for model in models:
        points = []
        for batch in sorted(batches):
            steps, warmup = point_steps(model, batch, work=work)
            points.append({"model": model, "batch": batch, "width": 1,
                           "filters": BASE_FILTERS if model == "cnn" else None,
                           "steps": steps, "warmup": warmup})
        groups.append(("batch", model, points))
    if widths:
        points = []
        for width in sorted(widths):
            steps, warmup = point_steps("cnn", width_batch, width, work)
            points.append({"model": "cnn", "batch": width_batch, "width": width,
                           "filters": BASE_FILTERS * width, "steps": steps, "warmup": warmup})
        groups.append(("width", "cnn", points))
    return groups


def synthetic_batches(model: str, batch: int, count: int = 4,
                      seed: int = 0) -> list[tuple[Any, Any]]:
    """``count`` (images, labels) NumPy batches of MNIST's shape: float32 in [0, 1), shape
    (batch, 784) for the MLP and (batch, 1, 28, 28) for the conv nets; int64 labels 0-9."""
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = (batch, 784) if model == "mlp" else (batch, 1, 28, 28)
    return [(rng.random(shape, dtype=np.float32), rng.integers(0, 10, batch, dtype=np.int64))
            for _ in range(count)]


def _xpnet_step(backend: str, point: dict[str, Any]) -> Any:
    """One xpnet training step on ``backend`` (selected here), as benchmarks/xpnet_bench.py
    trains: host batch to the device, loss, backward without the input gradient, Adam."""
    import xpnet
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet

    xpnet.set_backend(backend)
    if point["model"] == "cnn":
        model: Any = SimpleConvNet(filters=point["filters"] or BASE_FILTERS, seed=0)
    else:
        model = {"mlp": TwoLayerNet, "deep": DeepConvNet}[point["model"]](seed=0)
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    opt = xpnet.Adam(model, lr=1e-3)

    def step(xb: Any, yb: Any) -> float:
        loss = loss_fn.forward(model.forward(xpnet.to_device(xb)), xpnet.to_device(yb))
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return float(loss)
    return step


def _torch_step(point: dict[str, Any]) -> Any:
    """One plain-PyTorch training step (autograd, torch.optim.Adam), as the PyTorch reference
    trains."""
    import torch
    import torch.nn.functional as F
    from torch_nets import torch_net  # benchmarks/torch_nets.py

    torch.manual_seed(0)
    net = torch_net(point["model"], point["filters"] or BASE_FILTERS)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(xb: Any, yb: Any) -> float:
        loss = F.cross_entropy(net(torch.from_numpy(xb)), torch.from_numpy(yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.item())
    return step


def measure_point(side: str, point: dict[str, Any]) -> dict[str, Any]:
    """Build the point's model on ``side`` (for the xpnet sides this selects the backend), run
    its warm-up steps, then time its steps. Returns the point with ms_per_step, images_per_s,
    last_loss and peak_rss_mb (this process's peak so far) added."""
    if side not in SIDES:
        raise ValueError(f"measure_point: side {side!r} unknown; expected one of {SIDES}")
    step = _torch_step(point) if side == "torch" else _xpnet_step(side.split("-", 1)[1], point)
    data = synthetic_batches(point["model"], point["batch"])
    for i in range(point["warmup"]):
        step(*data[i % len(data)])
    loss = float("nan")
    t0 = time.perf_counter()
    for i in range(point["steps"]):
        loss = step(*data[i % len(data)])
    seconds = time.perf_counter() - t0
    ms = 1e3 * seconds / point["steps"]
    return dict(point, ms_per_step=round(ms, 4),
                images_per_s=round(point["batch"] * point["steps"] / seconds, 1),
                last_loss=round(loss, 4), peak_rss_mb=round(peak_rss_mb(), 1))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(side: str, points: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """A side's run: its points in order, at ``threads`` threads. Returns the JSON record."""
    protocol.prepare_this_process(threads)
    sys.path.insert(0, str(ROOT))  # this checkout's xpnet
    import numpy as np
    info: dict[str, Any] = {"side": side, "threads": threads, "numpy": np.__version__}
    if side != "xpnet-numpy":
        import torch
        torch.set_num_threads(threads)
        info["torch"] = torch.__version__
    if side.startswith("xpnet"):
        import xpnet
        info["xpnet"] = xpnet.__version__
    info["points"] = [measure_point(side, p) for p in points]
    info["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return info


def run_side(side: str, points: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """One side's run in its own process, through the protocol's wrapper and environment."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "protocol.py"), str(Path(__file__).resolve()),
           "--child", side, "--points", json.dumps(points), "--threads", str(threads)]
    return protocol.timed_run(cmd, protocol.child_env(threads), ROOT)


def summarize(runs: list[dict[str, Any]], sides: Sequence[str]) -> list[dict[str, Any]]:
    """Per point (group, model, batch, width), each side's medians over the runs that count
    (``flagged`` runs excluded; None when every round was flagged), the runs' figures, and
    each xpnet side's speed over PyTorch's (ratio of the medians, and per counted round)."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        for p in run["points"]:
            key = (run["group"], p["model"], p["batch"], p["width"])
            row = rows.setdefault(key, {"group": run["group"], "model": p["model"],
                                        "batch": p["batch"], "width": p["width"],
                                        "filters": p["filters"], "steps": p["steps"],
                                        "sides": {}})
            row["sides"].setdefault(run["side"], []).append(
                dict(p, flagged=bool(run.get("flagged")), round=run["round"]))
    out = []
    for row in rows.values():
        by_side = row.pop("sides")
        row["sides"] = {}
        for side in sides:
            pts = by_side.get(side, [])
            counted = [p for p in pts if not p["flagged"]]
            row["sides"][side] = {
                "ms_per_step": _median([p["ms_per_step"] for p in counted]),
                "images_per_s": _median([p["images_per_s"] for p in counted]),
                "peak_rss_mb": _median([p["peak_rss_mb"] for p in counted]),
                "runs_ms_per_step": [p["ms_per_step"] for p in pts],
                "runs_flagged": [p["flagged"] for p in pts]}
        row["ratio_vs_torch"], row["ratio_vs_torch_rounds"] = {}, {}
        if "torch" in sides and "torch" in by_side:
            ref = {p["round"]: p for p in by_side["torch"] if not p["flagged"]}
            for side in sides:
                if side == "torch":
                    continue
                mine, theirs = row["sides"][side]["ms_per_step"], row["sides"]["torch"][
                    "ms_per_step"]
                row["ratio_vs_torch"][side] = (None if mine is None or theirs is None
                                               else round(theirs / mine, 3))
                row["ratio_vs_torch_rounds"][side] = [
                    round(ref[p["round"]]["ms_per_step"] / p["ms_per_step"], 3)
                    for p in by_side.get(side, []) if not p["flagged"] and p["round"] in ref]
        out.append(row)
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]], sides: Sequence[str]) -> str:
    """The tables: ms/step, images/s and xpnet / PyTorch speed per point (batch, then width),
    and each side's peak RSS at each group's largest point."""
    ratio_sides = [s for s in sides if s != "torch"] if "torch" in sides else []
    head = (["ms/step " + LABELS[s] for s in sides] + ["img/s " + LABELS[s] for s in sides]
            + [f"{LABELS[s]} / PyTorch" for s in ratio_sides])
    lines = []
    for group, first in (("batch", "model | batch"), ("width", "model | filters")):
        sel = [r for r in rows if r["group"] == group]
        if not sel:
            continue
        title = ("Step time against batch size" if group == "batch" else
                 f"Step time against width (batch {sel[0]['batch']})")
        lines += [f"\n{title}\n", f"| {first} | steps | " + " | ".join(head) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in head) + " |"]
        for r in sel:
            which = r["batch"] if group == "batch" else f"{r['filters']} (x{r['width']})"
            cells = ([_fmt(r["sides"][s]["ms_per_step"], ",.2f") for s in sides]
                     + [_fmt(r["sides"][s]["images_per_s"], ",.0f") for s in sides]
                     + [_fmt(r["ratio_vs_torch"].get(s), ".2f") + "x" for s in ratio_sides])
            cells = [c.replace("nanx", "nan") for c in cells]
            lines.append(f"| {MODEL_NAMES[r['model']]} | {which} | {r['steps']} | "
                         + " | ".join(cells) + " |")
    lines += ["\nPeak RSS (MB) at each group's largest point\n",
              "| group | model | " + " | ".join(LABELS[s] for s in sides) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in sides) + " |"]
    for group in ("batch", "width"):
        for model in dict.fromkeys(r["model"] for r in rows if r["group"] == group):
            last = [r for r in rows if r["group"] == group and r["model"] == model][-1]
            lines.append(f"| {group} | {MODEL_NAMES[model]} | " + " | ".join(
                _fmt(last["sides"][s]["peak_rss_mb"], ",.0f") for s in sides) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Protocol: every side runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE; a "
               "round in which any run started or ended with a 1-minute load average above "
               "the core count is flagged and excluded from the medians.")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="models of the batch-size table (default: mlp cnn deep)")
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES),
                   help="batch sizes (default: 32 64 128 256 512 1024)")
    p.add_argument("--widths", nargs="*", type=int, default=list(WIDTHS),
                   help=f"SimpleConvNet widths, multiples of its {BASE_FILTERS} filters; none "
                        "skips the width table (default: 1 2 4)")
    p.add_argument("--width-batch", type=int, default=100,
                   help="batch size of the width table (default: 100)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES),
                   help="sides to run (default: all three; the torch ones are dropped when torch "
                        "is not installed)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for all (default: 2)")
    p.add_argument("--work", type=float, default=1.0,
                   help="scales every point's step count (at least 2 steps; default: 1.0)")
    p.add_argument("--json", type=Path, default=None,
                   help="write the summary and every raw run here (default: none)")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--points", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:  # a side's run, started by the parent below
        print(json.dumps(child(args.child, json.loads(args.points), args.threads)))
        return 0
    for name, values in (("--batches", args.batches), ("--widths", args.widths),
                         ("--width-batch", [args.width_batch]), ("--rounds", [args.rounds]),
                         ("--threads", [args.threads])):
        if any(v < 1 for v in values):
            raise SystemExit(f"scaling.py: {name} must be positive integers, got {values}")
    if not args.work > 0:
        raise SystemExit(f"scaling.py: --work must be positive, got {args.work}")
    sides = list(args.sides)
    if importlib.util.find_spec("torch") is None:
        sides = [s for s in sides if s == "xpnet-numpy"]
        print("torch is not installed: only the xpnet-numpy side runs", file=sys.stderr)
    groups = plan(args.models, args.batches, args.widths, args.width_batch, args.work)
    limit = protocol.cores()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    from run import machine_line  # benchmarks/run.py
    out: dict[str, Any] = {"date": started, "machine": machine_line(), "argv": sys.argv[1:],
                           "threads": args.threads, "sides": sides, "load_limit": limit,
                           "groups": [{"group": g, "model": m, "points": pts}
                                      for g, m, pts in groups]}
    print(f"\n{started}  {out['machine']}")
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
        this_round = []
        for group, model, points in groups:
            for side in order:
                res = run_side(side, points, args.threads)
                res.update(group=group, model=model, round=rnd + 1)
                this_round.append(res)
                print(f"round {rnd + 1}/{args.rounds} {group} {model} {side}: " + ", ".join(
                    f"{p['batch'] if group == 'batch' else p['filters']}: "
                    f"{p['ms_per_step']:.1f} ms" for p in res["points"]),
                    file=sys.stderr, flush=True)
        if protocol.flag_rounds([this_round], limit)[0]:
            print(f"  round {rnd + 1} flagged (load above {limit}): excluded from the medians",
                  file=sys.stderr)
        runs += this_round
    if runs and all(r["flagged"] for r in runs):
        print("every round was flagged (load above the cores): no medians, re-run on a quieter "
              "machine", file=sys.stderr)
    out["summary"] = summarize(runs, sides)
    out["raw"] = runs
    print(markdown(out["summary"], sides))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
