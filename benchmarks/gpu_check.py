#!/usr/bin/env python3
"""The one GPU check: run once on a CUDA machine; PASS/FAIL per item, a JSON report, exit 1 on FAIL.

    python3 benchmarks/gpu_check.py --data-dir DATA [--wheels WHEELS] [--out gpu-check]

DATA holds mnist/ (the four MNIST .gz files). WHEELS, made beforehand on a machine with a network
by ``bash benchmarks/fetch_gpu_wheels.sh WHEELS``, is installed first with ``pip --no-index``
into the running Python, so the check works offline (an air-gapped node, a bare container).
Nothing else is needed beside the checkout: xpnet is imported from it, the benchmark protocol
from ../shared/bench or benchmarks/bench_protocol/.

Items (each PASS, FAIL or SKIP with the reason):
  install      the wheel folder installed (SKIP without --wheels)
  info         ``python -m xpnet info`` selects the backend under test
  smoke        ``python -m xpnet smoke`` on it
  gpu_tests    the gpu-marked tests (``pytest -m gpu``)
  examples     every example with ``--dry-run`` on the backend
  accuracy     mnist_cnn, 1 epoch, on the backend and on numpy: test accuracy within 0.3 points
  checkpoints  mnist_cnn saved on the backend after epoch 1 of 2, resumed on numpy, and the other
               way round: each matches a straight run on the resuming backend within 0.3 points
               (mnist_mlp with --quick)
  benchmark    SimpleConvNet (cnn) and TwoLayerNet (mlp) at batch 100 and 1000: xpnet vs PyTorch
               CUDA, both under benchmarks/xpnet_bench.py's protocol (warm-up, median epoch)
  dropout_rng  cost of a device dropout mask per call (CuPy only)
  multi_gpu    cuda:1 selected: every parameter, gradient, optimizer slot, buffer, batch, RNG draw
               and output on device 1, CuPy's current device left at 1 (SKIP with one GPU)
  distributed  tests/test_distributed*.py -m gpu (NCCL all-reduce), SKIP when absent

CPU self-test (what CI runs, so this script cannot rot): ``--backend array_api_strict --quick``
runs every item's logic with array_api_strict on its non-host ``device1`` standing in for the GPU
and PyTorch CPU standing in for PyTorch CUDA, on a few thousand MNIST images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
EXAMPLES = ("spiral", "moons", "vanishing_gradients", "optimizers", "overfitting", "batchnorm",
            "mnist_mlp", "mnist_cnn")
SYNTHETIC = ("spiral", "moons")
ACCURACY_POINTS = 0.3  # percentage points
REQUIREMENTS = HERE / "gpu_requirements.txt"


class Check:
    """Runs the items, records them, prints one line each."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = (self.out / "gpu_check.log").open("w")
        self.items: list[dict] = []
        self.py = sys.executable
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                              self.env.get("PYTHONPATH")]))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["XPNET_DATA_DIR"] = str(Path(args.data_dir).resolve())
        for k in ("XPNET_BACKEND", "XPNET_DEVICE"):
            self.env.pop(k, None)
        shared = ROOT.parent / "shared" / "bench"
        self.env.setdefault("XPNET_SHARED_BENCH", str(
            shared if (shared / "bench_common.py").is_file() else HERE / "bench_protocol"))
        if args.quick:
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                self.env.setdefault(k, "1")

    # ------------------------------------------------------------------ plumbing
    def run(self, cmd: list[str], *, env: dict | None = None, timeout: float = 1800
            ) -> subprocess.CompletedProcess:
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        self.log.flush()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env or self.env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc = subprocess.CompletedProcess(cmd, 124, exc.stdout or "", f"timed out: {exc}")
        self.log.write(proc.stdout[-20000:] + proc.stderr[-20000:])
        self.log.write(f"[exit {proc.returncode}]\n")
        self.log.flush()
        return proc

    def backend_env(self, backend: str) -> dict:
        env = dict(self.env, XPNET_BACKEND=backend)
        if backend == self.args.backend and self.args.device:
            env["XPNET_DEVICE"] = self.args.device
        return env

    def run_json(self, cmd: list[str], backend: str | None = None) -> dict:
        """Run a command whose last stdout line is one JSON object; raise with stderr if not."""
        proc = self.run(cmd, env=self.backend_env(backend) if backend else None)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[1:3])}: {tail}")
        try:
            out = json.loads(lines[-1])
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"last line is not JSON: {lines[-1][:200]!r}") from exc
        if not isinstance(out, dict):
            raise RuntimeError(f"last line is not a JSON object: {lines[-1][:200]!r}")
        return out

    def item(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            status, detail, data = fn()
        except Exception as exc:  # any failure of an item is that item's FAIL, never a crash
            status, detail, data = "FAIL", f"{type(exc).__name__}: {exc}", {}
        seconds = round(time.perf_counter() - t0, 1)
        self.items.append({"item": name, "status": status, "detail": detail,
                           "seconds": seconds, "data": data})
        print(f"{status:<4}  {name:<12} {detail}  ({seconds} s)", flush=True)

    # ------------------------------------------------------------------ items
    def install(self):
        if not self.args.wheels:
            return "SKIP", "no --wheels folder given; using what is installed", {}
        wheels = Path(self.args.wheels).resolve()
        req = wheels / "requirements.txt"
        if not req.is_file():
            req = REQUIREMENTS
        cmd = [self.py, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
               "-r", str(req)]
        proc = self.run(cmd)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return "FAIL", f"pip --no-index from {wheels} failed: {tail}", {}
        return "PASS", f"installed from {wheels} (offline)", {"requirements": str(req)}

    def info(self):
        proc = self.run([self.py, "-m", "xpnet", "info", "--json"],
                        env=self.backend_env(self.args.backend))
        out = json.loads(proc.stdout)  # printed whatever the selection; the exit status follows
        sel = out.get("selection", {})
        data = {"selection": sel, "cupy_devices": out["devices"]["cupy"],
                "versions": {k: v.get("version") for k, v in out["backends"].items()}}
        if sel.get("backend") != self.args.backend:
            return "FAIL", f"selection: {sel.get('error', sel)}", data
        return "PASS", f"{sel['backend']} {sel['version']} on {sel['device']}", data

    def smoke(self):
        proc = self.run([self.py, "-m", "xpnet", "smoke"], env=self.backend_env(self.args.backend))
        last = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["?"])
        status = "PASS" if proc.returncode == 0 else "FAIL"
        return status, last[-1] if status == "PASS" else proc.stderr.strip()[-300:], {}

    def gpu_tests(self):
        env = dict(self.env)
        if self.args.backend == "array_api_strict":
            env["XPNET_TEST_DEVICE"] = self.args.device or "device1"
        marker = "gpu" if not self.args.quick else "gpu or not slow"
        files = [] if not self.args.quick else ["tests/test_backend.py", "tests/test_data.py",
                                                 "tests/test_device_discipline.py"]
        proc = self.run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
                         *files], env=env)
        summary = (proc.stdout.strip().splitlines() or ["?"])[-1]
        if proc.returncode == 5:
            return "FAIL", "no gpu-marked test was collected", {}
        if proc.returncode != 0:
            return "FAIL", summary, {}
        if "skipped" in summary and "passed" not in summary and self.args.backend == "cupy":
            return "FAIL", f"every gpu test skipped (no usable GPU?): {summary}", {}
        return "PASS", summary, {}

    def examples(self):
        failed, done = [], {}
        for script in EXAMPLES:
            cmd = [self.py, f"examples/{script}.py", "--dry-run", "--json",
                   "--backend", self.args.backend]
            if script not in SYNTHETIC:
                cmd += ["--data-dir", self.args.data_dir]
            try:
                out = self.run_json(cmd, self.args.backend)
                done[script] = out.get("device")
                if out.get("backend") != self.args.backend:
                    failed.append(f"{script} ran on {out.get('backend')}")
            except RuntimeError as exc:
                failed.append(f"{script}: {exc}")
        if failed:
            return "FAIL", "; ".join(failed)[:500], done
        return "PASS", f"{len(done)} examples, --dry-run on {self.args.backend}", done

    def _cnn(self, backend: str, *extra: str, script: str = "mnist_cnn") -> dict:
        cmd = [self.py, f"examples/{script}.py", "--backend", backend, "--json",
               "--data-dir", self.args.data_dir, *self.limit, *extra]
        return self.run_json(cmd, backend)

    @property
    def limit(self) -> list[str]:
        return ["--train-limit", str(self.args.train_limit)] if self.args.train_limit else []

    def accuracy(self):
        ours = self._cnn(self.args.backend, "--epochs", "1")["test_accuracy"]
        ref = self._cnn("numpy", "--epochs", "1")["test_accuracy"]
        diff = abs(ours - ref) * 100
        data = {self.args.backend: ours, "numpy": ref, "diff_points": round(diff, 3)}
        status = "PASS" if diff <= ACCURACY_POINTS else "FAIL"
        return status, (f"{self.args.backend} {ours:.4f} vs numpy {ref:.4f}: {diff:.2f} points "
                        f"(limit {ACCURACY_POINTS})"), data

    def checkpoints(self):
        b = self.args.backend
        script = "mnist_mlp" if self.args.quick else "mnist_cnn"  # same logic, CPU-cheap
        data, bad = {"script": script}, []
        for save, load in ((b, "numpy"), ("numpy", b)):
            ck = self.out / f"ck-{save}-to-{load}.npz"
            ck.unlink(missing_ok=True)
            first = self._cnn(save, "--epochs", "2", "--stop-after", "1", "--checkpoint", str(ck),
                              script=script)
            resumed = self._cnn(load, "--epochs", "2", "--checkpoint", str(ck), "--resume",
                                script=script)
            straight = self._cnn(load, "--epochs", "2", script=script)
            diff = abs(resumed["test_accuracy"] - straight["test_accuracy"]) * 100
            key = f"{save}->{load}"
            data[key] = {"after_epoch_1": first["test_accuracy"],
                         "resumed": resumed["test_accuracy"],
                         "straight": straight["test_accuracy"], "diff_points": round(diff, 3)}
            if resumed.get("resumed_from_epoch") != 1 or resumed.get("epochs") != 2:
                bad.append(f"{key}: did not resume from epoch 1")
            elif diff > ACCURACY_POINTS:
                bad.append(f"{key}: resumed {resumed['test_accuracy']:.4f} vs straight "
                           f"{straight['test_accuracy']:.4f}")
        if bad:
            return "FAIL", "; ".join(bad), data
        return "PASS", f"{script}: " + "; ".join(
            f"{k} resumed {v['resumed']:.4f} vs straight {v['straight']:.4f}"
            for k, v in data.items() if k != "script"), data

    def benchmark(self):
        b, quick = self.args.backend, self.args.quick
        torch_device = "cpu" if b != "cupy" else (self.args.device or "cuda:0")
        common = ["--json", "--data-dir", str(Path(self.args.data_dir) / "mnist"),
                  "--epochs", "1" if quick else "2", *self.limit]
        if quick:
            common += ["--threads", "1", "--warmup-steps", "1"]
        data, lines = {}, []
        for model in ("cnn", "mlp"):
            for bs in (100, 1000):
                args = [*common, "--model", model, "--batch-size", str(bs)]
                xp_res = self.run_json([self.py, "benchmarks/xpnet_bench.py", "--backend", b,
                                        *args], b)
                th_res = self.run_json([self.py, "benchmarks/torch_cuda_reference.py",
                                        "--device", torch_device, *args])
                ratio = xp_res["images_per_s"] / th_res["images_per_s"]
                data[f"{model}-bs{bs}"] = {"xpnet": xp_res, "torch": th_res,
                                           "xpnet_over_torch": round(ratio, 3)}
                lines.append(f"{model}/{bs} {ratio:.2f}x")
        return "PASS", (f"xpnet-{b} images/s over torch-{torch_device.split(':')[0]} "
                        f"(one protocol): " + ", ".join(lines)), data

    def dropout_rng(self):
        if self.args.backend != "cupy":
            return "SKIP", "CuPy only (device RNG)", {}
        out = self.run_json([self.py, str(Path(__file__)), "--_dropout-timing"], "cupy")
        per_call, advanced = out["xpnet_us"], out["advanced_us"]
        status = "PASS" if per_call <= max(2.0 * advanced, advanced + 50.0) else "FAIL"
        return status, (f"mask (100, 4320) float32: xpnet {per_call:.1f} us/call, one advancing "
                        f"generator {advanced:.1f} us, XORWOW re-seeded {out['xorwow_us']:.1f} us"
                        ), out

    def multi_gpu(self):
        b = self.args.backend
        if b == "cupy":
            proc = self.run([self.py, "-c", "import cupy; "
                             "print(cupy.cuda.runtime.getDeviceCount())"])
            count = int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0
            if count < 2:
                return "SKIP", f"{count} CUDA device(s); needs two", {}
            device = "cuda:1"
        elif b == "array_api_strict":
            device = "device1"  # the CPU stand-in for a second GPU
        else:
            return "SKIP", f"backend {b} has no second device", {}
        out = self.run_json([self.py, str(Path(__file__)), "--_placement", b, device], b)
        status = "PASS" if not out["misplaced"] else "FAIL"
        detail = (f"{out['checked']} arrays on {device}" if status == "PASS"
                  else f"not on {device}: {', '.join(out['misplaced'][:10])}")
        return status, detail, out

    def distributed(self):
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob(
            "test_distributed*.py"))
        if not files:
            return "SKIP", "no tests/test_distributed*.py in this checkout", {}
        proc = self.run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                         *files])
        summary = (proc.stdout.strip().splitlines() or ["?"])[-1]
        if proc.returncode == 5:
            return "SKIP", "no gpu-marked distributed test", {"files": files}
        if proc.returncode == 0 and "passed" not in summary:  # e.g. one GPU: NCCL needs two
            return "SKIP", f"nothing ran: {summary}", {"files": files}
        return ("PASS" if proc.returncode == 0 else "FAIL"), summary, {"files": files}

    # ------------------------------------------------------------------ all
    def machine(self) -> dict:
        info = {"python": platform.python_version(), "platform": platform.platform(),
                "backend": self.args.backend, "quick": self.args.quick}
        smi = shutil.which("nvidia-smi")
        if smi:
            proc = self.run([smi, "--query-gpu=name,driver_version,memory.total",
                             "--format=csv,noheader"])
            info["nvidia_smi"] = proc.stdout.strip().splitlines()
        return info

    def main(self) -> int:
        started = time.time()
        machine = self.machine()
        print(f"xpnet gpu check: backend {self.args.backend}, data {self.args.data_dir}, "
              f"report {self.out / 'gpu_check.json'}", flush=True)
        names = ["install", "info", "smoke", "gpu_tests", "examples", "accuracy", "checkpoints",
                 "benchmark", "dropout_rng", "multi_gpu", "distributed"]
        only = set(self.args.only.split(",")) if self.args.only else None
        for name in names:
            if only is None or name in only:
                self.item(name, getattr(self, name))
        failed = [i["item"] for i in self.items if i["status"] == "FAIL"]
        report = {"machine": machine, "items": self.items, "failed": failed,
                  "passed": not failed, "seconds": round(time.time() - started, 1)}
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"xpnet gpu check: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}"
              f"; report {self.out / 'gpu_check.json'}, log {self.out / 'gpu_check.log'}")
        return 1 if failed else 0


# ---------------------------------------------------------------------- in-process helpers
def placement(backend: str, device: str) -> dict:
    """Select ``device`` and train one step of a CNN with Dropout and BatchNorm through the
    Trainer; report every array that is not on ``device`` (nothing may land on the default)."""
    import array_api_compat
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import xpnet
    import xpnet.data
    from xpnet import info as info_module
    from xpnet.train import Trainer

    b = xpnet.set_backend(backend, device)
    info_module.collect_info()  # must not move CuPy's current device
    want = b.device
    rng = xpnet.Generator(0)
    model = xpnet.Sequential(
        xpnet.Conv2d(1, 4, 3, padding=1, rng=rng), xpnet.BatchNorm(4), xpnet.ReLU(),
        xpnet.MaxPool2d(2), xpnet.Flatten(), xpnet.Dropout(0.3, rng=rng),
        xpnet.Linear(4 * 4 * 4, 3, rng=rng))
    opt = xpnet.Adam(model, lr=1e-2)
    host = np.random.default_rng(0)
    x = host.standard_normal((20, 1, 8, 8)).astype(np.float32)
    y = host.integers(0, 3, 20)
    trainer = Trainer(model, opt, batch_size=10)
    trainer.fit(x, y, epochs=1)
    arrays = {}
    for name, p in model.parameters().items():
        arrays[f"param {name}"] = p.data
        if p.grad is not None:
            arrays[f"grad {name}"] = p.grad
    arrays.update({f"buffer {k}": v for k, v in model.buffers().items()})
    for pname, slots in opt.state.items():
        for slot, v in slots.items():
            if array_api_compat.is_array_api_obj(v) and not isinstance(v, np.ndarray):
                arrays[f"optimizer {pname}/{slot}"] = v
    xb, yb = next(iter(xpnet.data.BatchLoader(x, y, 10, backend=b)))
    arrays["batch x"], arrays["batch y"] = xb, yb
    arrays["rng draw"] = rng.uniform((5,))
    arrays["output"] = model(xpnet.to_device(x[:4]))
    arrays["to_device copy"] = xpnet.to_device(arrays["output"])
    misplaced = [k for k, v in arrays.items() if array_api_compat.device(v) != want]
    out = {"device": str(want), "checked": len(arrays), "misplaced": misplaced}
    if backend == "cupy":
        import cupy
        out["current_device"] = cupy.cuda.Device().id
        if out["current_device"] != want.id:
            misplaced.append(f"CuPy current device {out['current_device']}")
    return out


def dropout_timing(repeats: int = 200) -> dict:
    """Microseconds per dropout-mask draw on CuPy: xpnet's path vs alternatives."""
    import cupy

    sys.path.insert(0, str(ROOT))
    import xpnet

    b = xpnet.set_backend("cupy")
    shape = (100, 4320)

    def timed(fn) -> float:
        for _ in range(10):
            fn()
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        cupy.cuda.Device().synchronize()
        return (time.perf_counter() - t0) / repeats * 1e6

    gen = xpnet.Generator(0)
    xpnet_us = timed(lambda: gen.uniform(shape, b.xp.float32))
    state = cupy.random.RandomState(0)
    advanced_us = timed(lambda: state.random_sample(shape, dtype=cupy.float32))
    xorwow = cupy.random.RandomState(0)
    seeds = iter(range(10**9))
    xorwow_us = timed(lambda: (xorwow.seed(next(seeds)),
                               xorwow.random_sample(shape, dtype=cupy.float32)))
    half = gen.uniform(shape, b.xp.float16)
    return {"xpnet_us": round(xpnet_us, 2), "advanced_us": round(advanced_us, 2),
            "xorwow_us": round(xorwow_us, 2), "float16_dtype": str(half.dtype)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--data-dir", help="folder holding mnist/ with the four MNIST .gz files")
    p.add_argument("--out", default="gpu-check", help="report folder (default gpu-check)")
    p.add_argument("--wheels", default=None,
                   help="folder from fetch_gpu_wheels.sh, installed with pip --no-index first")
    p.add_argument("--backend", default="cupy", choices=["cupy", "array_api_strict", "numpy"],
                   help="backend under test (default cupy; array_api_strict for the CPU "
                        "self-test)")
    p.add_argument("--device", default=None, help="device under test (default: the backend's)")
    p.add_argument("--quick", action="store_true",
                   help="self-test sizes: --train-limit 2000, 1 benchmark epoch, a test subset")
    p.add_argument("--train-limit", type=int, default=None,
                   help="MNIST training images for accuracy/checkpoints/benchmark (default: all"
                        "; 2000 with --quick)")
    p.add_argument("--only", default=None, help="comma-separated items to run")
    p.add_argument("--_placement", nargs=2, metavar=("BACKEND", "DEVICE"),
                   help=argparse.SUPPRESS)
    p.add_argument("--_dropout-timing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and args.train_limit is None:
        args.train_limit = 2000
    if args.backend == "array_api_strict" and args.device is None:
        args.device = "device1"  # the non-host device standing in for a GPU
    if not (args._placement or args._dropout_timing):
        if not args.data_dir:
            p.error("--data-dir DIR is required (DIR/mnist holds the four MNIST .gz files)")
        if not (Path(args.data_dir) / "mnist").is_dir():
            p.error(f"--data-dir: {args.data_dir}/mnist does not exist")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._placement:
        print(json.dumps(placement(*args._placement)))
        return 0
    if args._dropout_timing:
        print(json.dumps(dropout_timing()))
        return 0
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
