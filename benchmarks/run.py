#!/usr/bin/env python3
"""Side-by-side MNIST benchmark: xpnet vs the PyTorch CPU and textbook NumPy references.

Every run is its own process (so peak RSS is per framework), all with the same thread count,
data, seed and timing protocol (../shared/bench/bench_common.py), interleaved round by round:
torch, xpnet, textbook NumPy, torch, xpnet, ... Medians over rounds are reported with the ratio
xpnet / reference, and optionally the examples' own ``images_per_second`` and a scaling table.

Protocol (benchmarks/protocol.py): every side runs without OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE; each run's JSON records the BLAS library, kernel and thread count, torch's
thread count and the load average before and after it. A round in which any run started or
ended with a 1-minute load average above the core count (plus the one busy core of --busy) is
flagged and excluded from the medians. ``--busy`` keeps one busy-loop process pinned to one
core while both xpnet and PyTorch train (a machine with other work on it).

    python benchmarks/run.py                          # main table, 2 rounds (about 4 minutes)
    python benchmarks/run.py --scaling --examples     # plus batch-size/thread table and examples
    python benchmarks/run.py --json results.json      # also write every raw result
    python benchmarks/run.py --models deep cnn mlp --rounds 5 --layers   # DeepConvNet too,
                                                      # plus the per-layer conv/pool table
    python benchmarks/run.py --extra-backends torch   # also xpnet on its torch backend
                                                      # (row "xpnet-torch"), same run

DeepConvNet (``deep``) runs on ``--deep-train-limit`` images (6,000 by default: its epoch is
long) and has no textbook NumPy reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import protocol  # benchmarks/protocol.py: the one copy of the protocol

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XPNET_SHARED", ROOT.parent / "shared"))
REFERENCES = {
    "torch": SHARED / "bench" / "torch_reference.py",
    "xpnet": ROOT / "benchmarks" / "xpnet_bench.py",
    "numpy-textbook": SHARED / "bench" / "numpy_reference.py",
}


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    """Run a command in the protocol's environment and parse the JSON object on its last
    stdout line, with the load average before and after."""
    return protocol.timed_run(cmd, env, ROOT)


#: xpnet on further backends (``--extra-backends``), as rows "xpnet-<backend>"
EXTRA_BACKENDS: list[str] = []


def impls_for(model: str) -> list[str]:
    """The references a model has (the textbook NumPy script has no DeepConvNet), with a row
    per extra xpnet backend after xpnet's own."""
    impls = [i for i in REFERENCES if not (model == "deep" and i == "numpy-textbook")]
    return impls[:2] + [f"xpnet-{b}" for b in EXTRA_BACKENDS] + impls[2:]


def xpnet_impls(model: str) -> list[str]:
    return [i for i in impls_for(model) if i.startswith("xpnet")]


def bench(impl: str, model: str, args: argparse.Namespace, batch_size: int = 100,
          threads: int | None = None, train_limit: int | None = None) -> dict:
    backend = impl.split("-", 1)[1] if impl.startswith("xpnet-") else args.backend
    script = REFERENCES["xpnet" if impl.startswith("xpnet") else impl]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "protocol.py"), str(script),
           "--model", model, "--json",
           "--threads", str(threads or args.threads), "--batch-size", str(batch_size),
           "--data-dir", str(args.data_dir / "mnist")]
    if impl.startswith("xpnet"):
        cmd += ["--backend", backend, "--thread-policy", args.xpnet_threads]
    if train_limit:
        cmd += ["--train-limit", str(train_limit)]
    res = run_json(cmd, protocol.child_env(threads or args.threads))
    res["impl"] = impl
    print(f"  {impl:>15} {model}: {res['images_per_s']:>10,.0f} img/s  "
          f"acc {res['test_accuracy']:.4f}  peak RSS {res['peak_rss_mb']:.0f} MB",
          file=sys.stderr)
    return res


def median(runs: list[dict], key: str) -> float:
    """The median over the rounds that count (:func:`protocol.median`); NaN when every round
    was flagged."""
    value = protocol.median(runs, key)
    return float("nan") if value is None else value


def load_limit(args: argparse.Namespace) -> float:
    """The load average above which a round is flagged: the cores, plus the busy core that
    --busy itself adds."""
    return protocol.cores() + (1 if args.busy else 0)


def main_table(args: argparse.Namespace) -> dict:
    results: dict[str, dict[str, list[dict]]] = {m: {i: [] for i in impls_for(m)}
                                                 for m in args.models}
    for rnd in range(1, args.rounds + 1):
        print(f"round {rnd}/{args.rounds}", file=sys.stderr)
        for model in args.models:
            for impl in impls_for(model):
                limit = args.train_limit
                if impl == "numpy-textbook" and model == "cnn":
                    limit = args.textbook_train_limit or limit
                if model == "deep":
                    limit = args.deep_train_limit or limit
                if model == "cnn" and args.cnn_train_limit:
                    limit = args.cnn_train_limit
                results[model][impl].append(bench(impl, model, args, train_limit=limit))
        this_round = [by[rnd - 1] for m in args.models for by in results[m].values()]
        if protocol.flag_rounds([this_round], load_limit(args))[0]:
            print(f"  round {rnd} flagged (load above {load_limit(args):g}): excluded from "
                  "the medians", file=sys.stderr)
    if all(r.get("flagged") for by in results.values() for runs in by.values() for r in runs):
        print("every round was flagged (load above the cores): no medians, re-run on a "
              "quieter machine", file=sys.stderr)
    summary = {}
    for model, by_impl in results.items():
        row = {impl: {"images_per_s": median(runs, "images_per_s"),
                      "epoch_seconds_60k": 60000 / median(runs, "images_per_s"),
                      "test_accuracy": median(runs, "test_accuracy"),
                      "peak_rss_mb": median(runs, "peak_rss_mb"),
                      "runs_images_per_s": [r["images_per_s"] for r in runs],
                      "runs_flagged": [bool(r.get("flagged")) for r in runs]}
               for impl, runs in by_impl.items()}
        for impl in xpnet_impls(model):  # "ratio_vs_torch" for xpnet, "...@xpnet-torch" etc.
            tag = "" if impl == "xpnet" else f"@{impl}"
            x = row[impl]["images_per_s"]
            row["ratio_vs_torch" + tag] = x / row["torch"]["images_per_s"]
            # round by round (same machine state): the median of the per-round ratios
            rounds = [a["images_per_s"] / b["images_per_s"] for a, b in
                      zip(by_impl[impl], by_impl["torch"], strict=True)
                      if not a.get("flagged")]
            row["ratio_vs_torch_rounds" + tag] = rounds
            row["ratio_vs_torch_median_of_rounds" + tag] = (
                statistics.median(rounds) if rounds else float("nan"))
            if "numpy-textbook" in row:
                row["ratio_vs_numpy_textbook" + tag] = x / row["numpy-textbook"]["images_per_s"]
        summary[model] = row
    return {"summary": summary, "raw": results}


def print_table(summary: dict) -> None:
    print("\n| model | framework | img/s (median) | epoch s (60k) | test acc | peak RSS MB |"
          " runs img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, row in summary.items():
        for impl in impls_for(model):
            r = row[impl]
            runs = " / ".join(f"{v:,.0f}" for v in r["runs_images_per_s"])
            print(f"| {model} | {impl} | {r['images_per_s']:,.0f} | "
                  f"{r['epoch_seconds_60k']:.2f} | {r['test_accuracy']:.4f} | "
                  f"{r['peak_rss_mb']:.0f} | {runs} |")
    print("\n| model | xpnet row | xpnet / torch (medians) | median of round ratios |"
          " round ratios | xpnet / textbook NumPy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, row in summary.items():
        for impl in xpnet_impls(model):
            tag = "" if impl == "xpnet" else f"@{impl}"
            rounds = " / ".join(f"{r:.2f}" for r in row["ratio_vs_torch_rounds" + tag])
            textbook = row.get("ratio_vs_numpy_textbook" + tag)
            textbook = "-" if textbook is None else f"{textbook:.2f}x"
            print(f"| {model} | {impl} | {row['ratio_vs_torch' + tag]:.2f}x | "
                  f"{row['ratio_vs_torch_median_of_rounds' + tag]:.2f}x | {rounds} | "
                  f"{textbook} |")


def scaling(args: argparse.Namespace) -> list[dict]:
    rows = []
    print("scaling", file=sys.stderr)
    for model in args.scaling_models:
        limit = args.scaling_train_limit if model != "deep" else args.deep_train_limit
        for threads in args.scaling_threads:
            for bs in (32, 100, 256, 1024):
                for impl in ("xpnet", "torch"):
                    r = bench(impl, model, args, batch_size=bs, threads=threads,
                              train_limit=limit)
                    rows.append({"model": model, "impl": impl, "threads": threads,
                                 "batch_size": bs, "images_per_s": r["images_per_s"],
                                 "test_accuracy": r["test_accuracy"],
                                 "protocol": r["protocol"]})
    print("\n| model | threads | batch | xpnet img/s | torch img/s | xpnet / torch |"
          " xpnet step ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.scaling_models:
        for threads in args.scaling_threads:
            for bs in (32, 100, 256, 1024):
                x, t = (next(r["images_per_s"] for r in rows if r["impl"] == i and
                             r["model"] == model and r["threads"] == threads and
                             r["batch_size"] == bs) for i in ("xpnet", "torch"))
                print(f"| {model} | {threads} | {bs} | {x:,.0f} | {t:,.0f} | {x / t:.2f}x | "
                      f"{bs / x * 1e3:.1f} |")
    return rows


def layers(args: argparse.Namespace) -> dict:
    """The per-layer table (benchmarks/layers.py) in its own process, same thread count."""
    print("layers", file=sys.stderr)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocol.py"),
                           str(ROOT / "benchmarks" / "layers.py"), "--threads",
                           str(args.threads), "--json"], capture_output=True, text=True,
                          env=protocol.child_env(args.threads), cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks/layers.py failed:\n{proc.stderr[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]))
    return json.loads(lines[-1])


def examples(args: argparse.Namespace) -> dict:
    out = {}
    env = protocol.child_env(args.threads, XPNET_BACKEND=args.backend)
    print("examples", file=sys.stderr)
    for script in ("mnist_cnn.py", "mnist_mlp.py"):
        res = run_json([sys.executable, str(ROOT / "benchmarks" / "protocol.py"),
                        str(ROOT / "examples" / script), "--epochs", "1",
                        "--json", "--data-dir", str(args.data_dir)], env=env)
        out[script] = {k: res[k] for k in ("images_per_second", "train_seconds",
                                           "test_accuracy")}
        print(f"  examples/{script} --epochs 1: {res['images_per_second']:,.0f} img/s, "
              f"test acc {res['test_accuracy']:.4f}", file=sys.stderr)
    print("\n| example (--epochs 1) | images_per_second | test_accuracy |")
    print("| --- | --- | --- |")
    for script, r in out.items():
        print(f"| {script} | {r['images_per_second']:,.0f} | {r['test_accuracy']:.4f} |")
    return out


def main_parser() -> argparse.ArgumentParser:
    """run.py's command line."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Protocol: every side runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE; the "
               "JSON records each run's BLAS library, kernel and threads, torch's threads and "
               "the load average before and after. A round in which any run started or ended "
               "with a 1-minute load average above the core count (plus 1 under --busy) is "
               "flagged and excluded from the medians.")
    p.add_argument("--models", nargs="+", choices=["deep", "cnn", "mlp"],
                   default=["deep", "cnn", "mlp"], help="models to run (default: deep cnn mlp)")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved rounds; 0 skips the main table (default: 2)")
    p.add_argument("--threads", type=int, default=2, help="threads for all (default: 2)")
    p.add_argument("--backend", default="numpy", help="xpnet backend (default: numpy)")
    p.add_argument("--extra-backends", nargs="*", default=[],
                   help="also run xpnet on these backends in the main table, interleaved in "
                        "the same rounds, as rows 'xpnet-<backend>' (e.g. torch; the scaling "
                        "and examples tables use --backend only; default: none)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="training images per epoch, all frameworks (default: all 60000)")
    p.add_argument("--textbook-train-limit", type=int, default=None,
                   help="images for the slow textbook CNN only; img/s is per image "
                        "(default: same as --train-limit)")
    p.add_argument("--deep-train-limit", type=int, default=6000,
                   help="training images per DeepConvNet epoch, all frameworks; 0: all "
                        "(default: 6000)")
    p.add_argument("--cnn-train-limit", type=int, default=None,
                   help="training images per SimpleConvNet epoch, all frameworks (default: as "
                        "--train-limit)")
    p.add_argument("--xpnet-threads", choices=["fixed", "adaptive"], default="fixed",
                   help="fixed: xpnet runs with --threads like the others; adaptive: with its "
                        "default thread policy (xpnet.threads.adapt_threads; use with --busy) "
                        "(default: fixed)")
    p.add_argument("--busy", action="store_true",
                   help="busy-machine scenario: one busy-loop process pinned to one core while "
                        "both xpnet and PyTorch train (main table only; default: off)")
    p.add_argument("--layers", action="store_true",
                   help="also time each conv/pool shape against torch (benchmarks/layers.py; "
                        "default: off)")
    p.add_argument("--scaling-models", nargs="+", choices=["deep", "cnn"], default=["cnn"],
                   help="models of the scaling table (default: cnn)")
    p.add_argument("--scaling-threads", nargs="+", type=int, default=[1, 2],
                   help="thread counts of the scaling table (default: 1 2)")
    p.add_argument("--scaling", action="store_true",
                   help="also run batch sizes 32/100/256/1024 x 1/2 threads (default: off)")
    p.add_argument("--scaling-train-limit", type=int, default=12000,
                   help="images per scaling run (default: 12000)")
    p.add_argument("--examples", action="store_true",
                   help="also run examples/mnist_cnn.py and mnist_mlp.py --epochs 1 "
                        "(default: off)")
    p.add_argument("--data-dir", type=Path, default=SHARED / "data",
                   help="folder holding mnist/ (default: ../shared/data)")
    p.add_argument("--json", type=Path, default=None, help="write all results here "
                   "(default: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = main_parser().parse_args(argv)
    EXTRA_BACKENDS[:] = args.extra_backends
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = {"date": started, "machine": machine_line(), "argv": sys.argv[1:],
           "busy": args.busy, "load_limit": load_limit(args)}
    print(f"\n{started}  {out['machine']}" + ("  (busy: one core looping)" if args.busy else ""))
    if args.rounds > 0:  # --rounds 0: only the extra tables
        with protocol.busy_core() if args.busy else contextlib.nullcontext():
            out.update(main_table(args))
        print_table(out["summary"])
    if args.layers:
        out["layers"] = layers(args)
    if args.scaling:
        out["scaling"] = scaling(args)
    if args.examples:
        out["examples"] = examples(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    return (f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"NumPy {numpy.__version__}")


if __name__ == "__main__":
    sys.exit(main())
