#!/usr/bin/env python3
"""The GPU acceptance check: one command on a CUDA machine, exit status 1 when any item failed.

Each item is PASS, FAIL, SKIP or INFO; the JSON report is rewritten after every item.

    python3 release/gpu_check.py --preinstalled --data-dir DATA --out OUT/gpu-check [--quick]

DATA holds mnist/ (the four MNIST .gz files). ``--preinstalled`` uses the machine's own numpy,
CuPy, PyTorch and pytest and adds only the three small pure-Python wheels xpnet needs beside
them (array-api-compat, array-api-extra, array-api-strict), installed offline from ``--wheels``
(default .gpu-wheels/, filled beforehand by ``bash release/fetch_gpu_wheels.sh``) with
``pip install --no-deps --target`` into a scratch folder put on PYTHONPATH. Without it, the
check uses whatever the running Python has. xpnet is always this checkout's.

Items, in order (``--only a,b`` runs some; each has its own time budget, full/--quick, and a
run cut at a budget records that item as FAIL and goes on):
  install      the carried wheels installed offline (SKIP without --preinstalled)
  environment  the carried packages are the ones imported; ``xpnet info`` selects CuPy on a GPU
  smoke        ``python -m xpnet smoke`` on CuPy, with a cold and then a warm kernel cache (the
               difference is the NVRTC warm-up)
  cupy_tests   the gpu-marked tests on CuPy: at least a minimum number passed, none failed, and
               no case skipped because CuPy or the GPU was unusable
  accuracy     examples/mnist_cnn.py, 1 epoch, on CuPy and on NumPy, same seed: test accuracy
               within 0.003; each run's JSON names its backend and device
  checkpoint   a checkpoint written on CuPy resumes on NumPy and one written on NumPy resumes on
               CuPy: the model state loads bit for bit on the other backend, the resumed run
               carries the first epoch's record over exactly, and the two mixed runs agree
               within 0.003
  nccl         the one-rank NCCL communicator test (tests/test_distributed.py)
  benchmark    INFO: xpnet-on-CuPy against PyTorch CUDA, images/s for TwoLayerNet, SimpleConvNet
               and DeepConvNet (release/gpu_bench.py: data resident on the GPU, warm-up
               excluded, CUDA-event timing), and the cost of one device dropout mask;
               a FAIL only when it produced no figures

CPU self-test (CI): ``--self-test`` runs the same items with array_api_strict on its non-host
``device1`` standing in for the GPU and PyTorch CPU for PyTorch CUDA; the items that need CuPy
itself (cupy_tests, nccl) SKIP with the reason. On a GPU, a CuPy that cannot run is a FAIL.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
DEFAULT_WHEELS = ROOT / ".gpu-wheels"
CARRIED = ("array_api_compat", "array_api_extra", "array_api_strict")  # import names
ACCURACY_TOLERANCE = 0.003  # test accuracy, as a fraction
CUPY_TESTS_MIN = {"full": 400, "quick": 150}  # gpu-marked cases that must pass
CUPY_TEST_FILES_QUICK = ("tests/test_backend.py", "tests/test_ops.py", "tests/test_optim.py",
                         "tests/test_device_discipline.py", "tests/test_data.py",
                         "tests/test_rng.py")
NCCL_TESTS = ("tests/test_distributed.py", "nccl and not two_rank")  # file, pytest -k
MODELS = ("mlp", "cnn", "deep")  # TwoLayerNet, SimpleConvNet, DeepConvNet
UNUSABLE = re.compile(r"cupy backend unavailable|cupy is not installed|no usable cuda device|"
                      r"cupy unavailable", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One item of the check: ``run(check)`` returns (status, detail, data)."""

    name: str
    run: Callable[[Check], tuple[str, str, dict]]
    budget_s: int        # full run
    quick_budget_s: int  # --quick


class Cut(Exception):
    """An item ran past its time budget."""


class Check:
    """Runs the items, records them, rewrites the report after each one."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="xpnet-gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.site = self.work / "site"
        self.log = (self.out / "gpu_check.log").open("w")
        self.items: list[dict] = []
        self.py = sys.executable
        self.data_dir = str(Path(args.data_dir).resolve())
        # what stands for the GPU: CuPy on a CUDA device, or array_api_strict's device1
        self.backend = "array_api_strict" if args.self_test else "cupy"
        self.device = "device1" if args.self_test else args.device
        self.torch_device = "cpu" if args.self_test else (args.device or "cuda:0")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("XPNET_BACKEND", "XPNET_DEVICE", "XPNET_TEST_"))}
        paths = [str(self.site)] if args.preinstalled else []
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), *filter(None, [
            env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        env["XPNET_DATA_DIR"] = self.data_dir
        env["MPLBACKEND"] = "Agg"
        # a fresh kernel cache: the smoke item measures a cold start, later items reuse it
        env["CUPY_CACHE_DIR"] = str(self.work / "cupy-cache")
        self.env = env
        self.deadline = float("inf")
        self.partial = ""  # the output so far of a command cut at its budget
        self.started = time.time()

    # ------------------------------------------------------------------ plumbing
    def remaining(self) -> float:
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise Cut()
        return left

    def backend_env(self, backend: str) -> dict:
        env = dict(self.env, XPNET_BACKEND=backend)
        if backend == self.backend and self.device:
            env["XPNET_DEVICE"] = self.device
        return env

    def start(self, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        self.log.flush()
        return subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def finish(self, proc: subprocess.Popen) -> subprocess.CompletedProcess:
        """Wait within the item's budget; past it, kill the process group and raise Cut."""
        try:
            out, err = proc.communicate(timeout=self.remaining())
        except (subprocess.TimeoutExpired, Cut):
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            self._log_output(proc.args, out, err, "killed at the item's time budget")
            raise Cut() from None
        self._log_output(proc.args, out, err, f"exit {proc.returncode}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def _log_output(self, cmd, out: str, err: str, how: str) -> None:
        self.log.write((out or "")[-20000:] + (err or "")[-20000:] + f"[{how}]\n")
        self.log.flush()
        self.partial = out or ""

    def run(self, cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        return self.finish(self.start(cmd, env))

    def json_of(self, proc: subprocess.CompletedProcess) -> dict:
        """A finished command's stdout (or its last line) as a JSON object, or RuntimeError."""
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"exit {proc.returncode}: {' '.join(proc.args[1:3])}: {tail}")
        try:  # one JSON document (xpnet info indents it), else a last line of JSON
            out = json.loads(proc.stdout)
        except json.JSONDecodeError:
            try:
                out = json.loads(lines[-1])
            except json.JSONDecodeError as exc:
                raise RuntimeError(f"last line is not JSON: {lines[-1][:200]!r}") from exc
        if not isinstance(out, dict):
            raise RuntimeError(f"last line is not a JSON object: {lines[-1][:200]!r}")
        return out

    def run_json(self, cmd: list[str], backend: str | None = None) -> dict:
        return self.json_of(self.run(cmd, self.backend_env(backend) if backend else None))

    def cupy_missing(self) -> str | None:
        """Why the items that need CuPy itself cannot run here (self-test only), else None."""
        if not self.args.self_test:
            return None
        proc = self.run([self.py, "-c", "import cupy"])
        why = (proc.stderr.strip().splitlines() or ["imported"])[-1]
        return f"needs CuPy on a CUDA GPU; this is the CPU self-test ({why})"

    # ------------------------------------------------------------------ the report
    def report(self, pending: list[str]) -> dict:
        failed = [i["item"] for i in self.items if i["status"] == "FAIL"]
        return {"check": "xpnet gpu check", "finished": not pending,
                "passed": not failed and not pending, "failed": failed, "pending": pending,
                "backend_under_test": self.backend,
                "device_under_test": self.device or "the backend's default",
                "torch_device": self.torch_device, "quick": self.quick,
                "self_test": self.args.self_test, "preinstalled": self.args.preinstalled,
                "machine": self.machine, "items": self.items,
                "seconds": round(time.time() - self.started, 1)}

    def write(self, pending: list[str]) -> None:
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report(pending), indent=1) + "\n")
        tmp.replace(path)

    def machine_info(self) -> dict:
        info = {"python": platform.python_version(), "platform": platform.platform(),
                "cpus": os.cpu_count()}
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                proc = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                                       "--format=csv,noheader"], capture_output=True,
                                      text=True, timeout=30)
                info["nvidia_smi"] = proc.stdout.strip().splitlines()
            except (OSError, subprocess.TimeoutExpired) as exc:
                info["nvidia_smi"] = [f"failed: {exc}"]
        return info

    def main(self, items: list[Item]) -> int:
        self.machine = self.machine_info()
        print(f"xpnet gpu check: {self.backend} on {self.device or 'its default device'}"
              f"{' (CPU self-test)' if self.args.self_test else ''}, report "
              f"{self.out / 'gpu_check.json'}", flush=True)
        names = [i.name for i in items]
        self.write(names)
        for k, item in enumerate(items):
            budget = round((item.quick_budget_s if self.quick else item.budget_s)
                           * self.args.budget_scale)
            self.deadline = time.perf_counter() + budget
            self.partial = ""
            t0 = time.perf_counter()
            try:
                status, detail, data = item.run(self)
            except Cut:
                status, detail, data = "FAIL", f"cut at its {budget} s budget", {
                    "output_tail": self.partial[-2000:]}
            except Exception as exc:  # an item's failure is that item's FAIL, never a crash
                status, detail, data = "FAIL", f"{type(exc).__name__}: {exc}", {}
            seconds = round(time.perf_counter() - t0, 1)
            self.items.append({"item": item.name, "status": status, "detail": detail,
                               "seconds": seconds, "budget_s": budget, "data": data})
            self.write(names[k + 1:])
            print(f"{status:<4}  {item.name:<12} {detail}  ({seconds} s)", flush=True)
        failed = [i["item"] for i in self.items if i["status"] == "FAIL"]
        print(f"xpnet gpu check: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}"
              f" in {round(time.time() - self.started)} s; report "
              f"{self.out / 'gpu_check.json'}, log {self.out / 'gpu_check.log'}", flush=True)
        return 1 if failed else 0


# ---------------------------------------------------------------------- the items
def install(c: Check):
    if not c.args.preinstalled:
        return "SKIP", "without --preinstalled: the running Python's packages are used", {}
    wheels = Path(c.args.wheels).resolve()
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    names = {w.name.split("-")[0].lower() for w in found}
    missing = [n for n in CARRIED if n not in names]
    if missing:
        return "FAIL", (f"{wheels}: no wheel for {', '.join(missing)}; fill it with "
                        f"`bash release/fetch_gpu_wheels.sh {wheels}`"), {}
    shutil.rmtree(c.site, ignore_errors=True)
    proc = c.run([c.py, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                  "--no-compile", "--disable-pip-version-check", "--target", str(c.site),
                  *map(str, found)])
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return "FAIL", f"pip install --no-deps --target failed: {tail}", {}
    return "PASS", (f"{len(found)} wheels into {c.site} (offline, --no-deps), on PYTHONPATH"), {
        "wheels": [w.name for w in found]}


_ENV_PROBE = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        m = importlib.import_module(name)
        out[name] = {"version": getattr(m, "__version__", "?"), "file": m.__file__}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""


def environment(c: Check):
    names = [*CARRIED, "numpy", "cupy", "torch", "pytest", "xpnet"]
    mods = c.json_of(c.run([c.py, "-c", _ENV_PROBE, *names]))
    info = c.json_of(c.run([c.py, "-m", "xpnet", "info", "--json"],
                           c.backend_env(c.backend)))
    sel = info.get("selection", {})
    data = {"modules": mods, "selection": sel, "cupy_devices": info.get("devices", {}).get(
        "cupy")}
    bad = [f"{n}: {mods[n].get('error')}" for n in (*CARRIED, "numpy", "xpnet")
           if "error" in mods[n]]
    if c.args.preinstalled:
        bad += [f"{n} imported from {mods[n]['file']}, not the carried wheel in {c.site}"
                for n in CARRIED if "file" in mods[n]
                and not Path(mods[n]["file"]).resolve().is_relative_to(c.site)]
    if "file" in mods["xpnet"] and not Path(mods["xpnet"]["file"]).resolve().is_relative_to(
            ROOT):
        bad.append(f"xpnet imported from {mods['xpnet']['file']}, not this checkout")
    if sel.get("backend") != c.backend:
        bad.append(f"xpnet selects {sel.get('backend')!r}, not {c.backend!r}: "
                   f"{sel.get('error', sel)}")
    if bad:
        return "FAIL", "; ".join(bad), data
    versions = ", ".join(f"{n} {mods[n]['version']}" for n in names if "version" in mods[n])
    return "PASS", f"{sel['backend']} on {sel.get('device')}; {versions}", data


def smoke(c: Check):
    runs = []
    for _cache in ("cold", "warm"):  # the same command: CuPy compiles, then reuses
        t0 = time.perf_counter()
        proc = c.run([c.py, "-m", "xpnet", "smoke"], c.backend_env(c.backend))
        runs.append(round(time.perf_counter() - t0, 2))
        if proc.returncode != 0:
            return "FAIL", (proc.stderr.strip() or proc.stdout.strip())[-300:], {}
    first = proc.stdout.strip().splitlines()[0]
    data = {"cold_s": runs[0], "warm_s": runs[1], "nvrtc_warmup_s": round(runs[0] - runs[1], 2),
            "first_line": first}
    if f"backend {c.backend}" not in first:
        return "FAIL", f"ran on the wrong backend: {first}", data
    return "PASS", (f"{first.split(': ', 1)[-1]}; cold cache {runs[0]} s, warm {runs[1]} s"), data


_OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_NODE = re.compile(r"(tests/\S+::\S+)")


def pytest_outcomes(text: str) -> dict:
    """Counts per outcome from ``pytest -v`` lines (also usable on a cut run's partial output)
    and the skip reasons from ``-rs``."""
    counts: dict[str, int] = {}
    failed = []
    for line in text.splitlines():
        if line.startswith(("SKIPPED [", "FAILED ", "ERROR ")):
            continue  # the -r summary repeats outcomes
        node, outcome = _NODE.search(line), _OUTCOME.search(line)
        if node and outcome:
            counts[outcome.group(1)] = counts.get(outcome.group(1), 0) + 1
            if outcome.group(1) in ("FAILED", "ERROR"):
                failed.append(node.group(1))
    reasons = sorted({m.group(1).strip() for m in re.finditer(
        r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", text, re.MULTILINE)})
    return {"counts": counts, "failed": failed[:20], "skip_reasons": reasons[:20]}


def _pytest(c: Check, args: list[str]) -> tuple[subprocess.CompletedProcess | None, dict]:
    env = dict(c.env)
    try:
        proc = c.run([c.py, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", *args], env)
    except Cut:
        outcome = pytest_outcomes(c.partial)
        outcome["cut"] = True
        raise _CutWith(outcome) from None
    return proc, pytest_outcomes(proc.stdout)


class _CutWith(Cut):
    def __init__(self, data: dict):
        super().__init__()
        self.data = data


def cupy_tests(c: Check):
    why = c.cupy_missing()
    if why:
        return "SKIP", why, {}
    mode = "quick" if c.quick else "full"
    files = list(CUPY_TEST_FILES_QUICK) if c.quick else []
    jobs = ["-n", str(c.args.jobs)] if c.args.jobs > 1 else []  # pytest-xdist
    try:
        proc, data = _pytest(c, ["-m", "gpu", *jobs, *files])
    except _CutWith as cut:
        n = cut.data["counts"].get("PASSED", 0)
        return "FAIL", f"cut at the budget after {n} passed cases", cut.data
    counts = data["counts"]
    passed, minimum = counts.get("PASSED", 0), CUPY_TESTS_MIN[mode]
    data["minimum"], data["jobs"] = minimum, c.args.jobs
    summary = (proc.stdout.strip().splitlines() or ["?"])[-1].strip("= ")
    unusable = [r for r in data["skip_reasons"] if UNUSABLE.search(r)]
    if proc.returncode not in (0,) or data["failed"]:
        return "FAIL", f"{summary}; failed: {', '.join(data['failed'][:5])}", data
    if unusable:
        return "FAIL", f"cases skipped because CuPy could not run: {unusable[0]}", data
    if passed < minimum:
        return "FAIL", f"only {passed} CuPy cases passed, at least {minimum} must", data
    return "PASS", f"{summary} (at least {minimum} must pass)", data


def _mnist_cnn(c: Check, backend: str, *extra: str) -> list[str]:
    return [c.py, "examples/mnist_cnn.py", "--backend", backend, "--json", "--data-dir",
            c.data_dir, *extra]


def _names_backend(out: dict, backend: str, c: Check) -> str | None:
    """Why a run's JSON does not name the backend and device under test, or None."""
    if out.get("backend") != backend:
        return f"ran on {out.get('backend')!r}, not {backend!r}"
    device = str(out.get("device", ""))
    if backend == c.backend:
        want = c.device or ("cuda" if backend == "cupy" else "")
        if want.split(":")[0].lower() not in device.lower():
            return f"{backend} ran on device {device!r}, not {want!r}"
    return None


def _pair(c: Check, a: list[str], b: list[str], backends: tuple[str, str]) -> tuple[dict, dict]:
    """Two commands at once (the GPU one and the CPU one use different hardware)."""
    pa = c.start(a, c.backend_env(backends[0]))
    pb = c.start(b, c.backend_env(backends[1]))
    try:
        ra = c.finish(pa)
    except Cut:
        os.killpg(pb.pid, signal.SIGKILL)
        pb.communicate()
        raise
    rb = c.finish(pb)  # both ended before either is judged: nothing runs on into later items
    return c.json_of(ra), c.json_of(rb)


def accuracy(c: Check):
    """mnist_cnn 1 epoch, same seed: the backend under test against NumPy, and its mixed16
    (float16 with float32 master weights and loss scaling) against its own float32, all three
    at once (two on the GPU, one on the CPU). The self-test's array_api_strict has no float16:
    there the mixed16 run is left out and said so."""
    limit = c.args.train_limit
    extra = ["--epochs", "1", *(["--train-limit", str(limit)] if limit else [])]
    half = None if c.args.self_test else c.start(
        _mnist_cnn(c, c.backend, *extra, "--precision", "mixed16"), c.backend_env(c.backend))
    try:
        ours, ref = _pair(c, _mnist_cnn(c, c.backend, *extra), _mnist_cnn(c, "numpy", *extra),
                          (c.backend, "numpy"))
    except BaseException:
        if half is not None:
            os.killpg(half.pid, signal.SIGKILL)
            half.communicate()
        raise
    mixed = c.json_of(c.finish(half)) if half is not None else None
    keys = ("backend", "device", "test_accuracy", "train_seconds", "train_images")
    data: dict = {c.backend: {k: ours.get(k) for k in keys},
                  "numpy": {k: ref.get(k) for k in keys}}
    runs = [(ours, c.backend), (ref, "numpy")]
    if mixed is not None:
        data[f"{c.backend} mixed16"] = {k: mixed.get(k) for k in keys}
        runs.append((mixed, c.backend))
    for out, b in runs:
        why = _names_backend(out, b, c)
        if why:
            return "FAIL", why, data
    diff = abs(ours["test_accuracy"] - ref["test_accuracy"])
    data["difference"] = round(diff, 5)
    detail = (f"mnist_cnn 1 epoch on {ours['train_images']} images: {c.backend} "
              f"{ours['test_accuracy']:.4f} vs numpy {ref['test_accuracy']:.4f}, "
              f"difference {diff:.4f} (limit {ACCURACY_TOLERANCE})")
    ok = diff <= ACCURACY_TOLERANCE
    if mixed is None:
        detail += "; mixed16 not run (array_api_strict has no float16)"
    else:
        half_diff = abs(mixed["test_accuracy"] - ours["test_accuracy"])
        data["mixed16_difference"] = round(half_diff, 5)
        detail += (f"; {c.backend} mixed16 {mixed['test_accuracy']:.4f} vs float32, "
                   f"difference {half_diff:.4f} (limit {ACCURACY_TOLERANCE})")
        ok = ok and half_diff <= ACCURACY_TOLERANCE
    return ("PASS" if ok else "FAIL"), detail, data


def checkpoint(c: Check):
    b = c.backend
    limit = ["--train-limit", str(c.args.checkpoint_limit)]
    ck = {"gpu": c.work / "written-on-gpu.npz", "cpu": c.work / "written-on-numpy.npz"}
    for p in ck.values():
        p.unlink(missing_ok=True)
    first = ["--epochs", "2", "--stop-after", "1", *limit]
    w_gpu, w_cpu = _pair(c, _mnist_cnn(c, b, *first, "--checkpoint", str(ck["gpu"])),
                         _mnist_cnn(c, "numpy", *first, "--checkpoint", str(ck["cpu"])),
                         (b, "numpy"))
    bad = [why for why in (_names_backend(w_gpu, b, c), _names_backend(w_cpu, "numpy", c)) if why]
    # the model state, loaded on the other backend, equals the file bit for bit
    states = {"gpu->numpy": c.run_json([c.py, str(Path(__file__)), "--_state", str(ck["gpu"]),
                                        "numpy"], "numpy"),
              f"numpy->{b}": c.run_json([c.py, str(Path(__file__)), "--_state", str(ck["cpu"]),
                                         b], b)}
    for key, st in states.items():
        if st["differ"] or st["misplaced"]:
            bad.append(f"{key}: state differs in {st['differ'][:3]}, off the device "
                       f"{st['misplaced'][:3]}")
    # resume each on the other backend: epoch 2 of 2
    g2n, n2g = c.work / "gpu-to-numpy.npz", c.work / "numpy-to-gpu.npz"
    shutil.copyfile(ck["gpu"], g2n)
    shutil.copyfile(ck["cpu"], n2g)
    resume = ["--epochs", "2", "--resume", *limit]
    r_n2g, r_g2n = _pair(c, _mnist_cnn(c, b, *resume, "--checkpoint", str(n2g)),
                         _mnist_cnn(c, "numpy", *resume, "--checkpoint", str(g2n)),
                         (b, "numpy"))
    data = {"train_images": w_gpu.get("train_images"), "state": {
        k: {"arrays": v["checked"]} for k, v in states.items()}}
    for key, writer, out, reader in ((f"{b}->numpy", w_gpu, r_g2n, "numpy"),
                                     (f"numpy->{b}", w_cpu, r_n2g, b)):
        why = _names_backend(out, reader, c)
        if why:
            bad.append(f"{key}: {why}")
        if out.get("resumed_from_epoch") != 1 or out.get("epochs") != 2:
            bad.append(f"{key}: resumed from epoch {out.get('resumed_from_epoch')} to "
                       f"{out.get('epochs')}, not from 1 to 2")
        elif out["history"][0] != writer["history"][0]:
            bad.append(f"{key}: epoch 1's record changed on resuming")
        data[key] = {"after_epoch_1": writer["test_accuracy"],
                     "resumed_epoch_2": out["test_accuracy"]}
    if not bad:
        diff = abs(r_g2n["test_accuracy"] - r_n2g["test_accuracy"])
        data["difference"] = round(diff, 5)
        if diff > ACCURACY_TOLERANCE:
            bad.append(f"the mixed runs differ by {diff:.4f} in test accuracy "
                       f"(limit {ACCURACY_TOLERANCE})")
    if bad:
        return "FAIL", "; ".join(bad), data
    return "PASS", (f"model state bit-exact both ways ({states['gpu->numpy']['checked']} "
                    f"arrays); {b}->numpy resumed {r_g2n['test_accuracy']:.4f}, numpy->{b} "
                    f"{r_n2g['test_accuracy']:.4f}"), data


def nccl(c: Check):
    why = c.cupy_missing()
    if why:
        return "SKIP", why, {}
    path, select = NCCL_TESTS
    try:
        proc, data = _pytest(c, [path, "-m", "gpu", "-k", select])
    except _CutWith as cut:
        return "FAIL", "cut at the budget", cut.data
    counts = data["counts"]
    summary = (proc.stdout.strip().splitlines() or ["?"])[-1].strip("= ")
    if proc.returncode == 5:
        return "FAIL", f"no test in {path} matches -m gpu -k {select!r}", data
    if proc.returncode != 0 or data["failed"]:
        return "FAIL", summary, data
    if counts.get("SKIPPED") or not counts.get("PASSED"):
        why = data["skip_reasons"] or summary
        return "FAIL", f"the one-rank NCCL test did not run: {why}", data
    return "PASS", f"one-rank NCCL all-reduce: {summary}", data


def benchmark(c: Check):
    if c.args.self_test:  # the code paths only: tiny batches, a step or two
        sizes, warmup, steps = (20,), 1, 2
    elif c.quick:
        sizes, warmup, steps = (100,), 10, 50
    else:
        sizes, warmup, steps = (100, 1000), 20, 100
    common = ["--model", *MODELS, "--batch-size", *map(str, sizes), "--warmup-steps",
              str(warmup), "--steps", str(steps), "--data-dir", c.data_dir, "--json"]
    # one process per framework, one after the other: they never share the GPU
    ours = c.run_json([c.py, str(HERE / "gpu_bench.py"), "--framework", "xpnet", "--backend",
                       c.backend, *(["--device", c.device] if c.device else []), *common],
                      c.backend)["runs"]
    ref = c.run_json([c.py, str(HERE / "gpu_bench.py"), "--framework", "torch", "--device",
                      c.torch_device, *common])["runs"]
    data, lines = {}, []
    for a, b in zip(ours, ref):
        ratio = a["images_per_s"] / b["images_per_s"]
        key = f"{a['model']}-bs{a['batch_size']}"
        data[key] = {"xpnet": a, "torch": b, "xpnet_over_torch": round(ratio, 3)}
        lines.append(f"{a['model']}/{a['batch_size']} {a['images_per_s']:,.0f} vs "
                     f"{b['images_per_s']:,.0f} ({ratio:.2f}x)")
    if c.backend == "cupy":  # the device dropout mask's cost per draw (xpnet/rng.py)
        data["dropout_mask"] = c.run_json([c.py, str(Path(__file__)), "--_dropout-timing"],
                                          "cupy")
        lines.append(f"dropout mask {data['dropout_mask']['xpnet_us']} us/draw")
    timer = ours[0]["timer"]
    return "INFO", (f"images/s xpnet-{c.backend} vs torch-{c.torch_device.split(':')[0]}, "
                    f"{timer}: " + "; ".join(lines)), data


# The items in their order. A new item: one function above and one line here.
ITEMS = [
    Item("install", install, 20, 20),
    Item("environment", environment, 25, 20),
    Item("smoke", smoke, 30, 25),
    Item("cupy_tests", cupy_tests, 160, 50),
    Item("accuracy", accuracy, 75, 35),
    Item("checkpoint", checkpoint, 50, 30),
    Item("nccl", nccl, 25, 20),
    Item("benchmark", benchmark, 85, 35),
]
FULL_LIMIT_S, QUICK_LIMIT_S = 480, 240  # one call on the GPU machine; the budgets sum below


# ---------------------------------------------------------------------- in-process helper
def state_roundtrip(path: str, backend: str) -> dict:
    """Load a checkpoint's model state onto ``backend`` in the model mnist_cnn trains
    (SimpleConvNet); report the arrays that are not on the backend's device or differ, bit for
    bit, from the file."""
    import array_api_compat
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import xpnet
    from xpnet.io.checkpoint import load_checkpoint
    from xpnet.models import SimpleConvNet

    b = xpnet.set_backend(backend, os.environ.get("XPNET_DEVICE") or None)
    saved = load_checkpoint(path).model
    model = SimpleConvNet()
    model.load_state_dict(saved)
    arrays = {k: p.data for k, p in model.parameters().items()}
    arrays.update(model.buffers())
    misplaced = [k for k, v in arrays.items() if array_api_compat.device(v) != b.device]
    back = model.state_dict()
    differ = [k for k, v in saved.items() if k not in back or back[k].dtype != v.dtype
              or back[k].tobytes() != np.ascontiguousarray(v).tobytes()]
    return {"backend": b.name, "device": str(b.device), "checked": len(saved),
            "differ": differ, "misplaced": misplaced}


def dropout_timing(repeats: int = 200) -> dict:
    """Microseconds per (100, 4320) float32 dropout-mask draw on CuPy: xpnet's Generator, one
    advancing CuPy generator, and CuPy's default XORWOW re-seeded per draw."""
    import cupy

    sys.path.insert(0, str(ROOT))
    import xpnet

    b = xpnet.set_backend("cupy", os.environ.get("XPNET_DEVICE") or None)
    shape = (100, 4320)

    def timed(fn) -> float:
        for _ in range(10):
            fn()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / repeats * 1000.0

    gen = xpnet.Generator(0)
    state = cupy.random.RandomState(0)
    xorwow = cupy.random.RandomState(0)
    seeds = iter(range(10**9))
    return {"xpnet_us": round(timed(lambda: gen.uniform(shape, b.xp.float32)), 2),
            "advancing_us": round(timed(
                lambda: state.random_sample(shape, dtype=cupy.float32)), 2),
            "xorwow_reseeded_us": round(timed(lambda: (
                xorwow.seed(next(seeds)), xorwow.random_sample(shape, dtype=cupy.float32))), 2)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--data-dir", help="folder holding mnist/ with the four MNIST .gz files")
    p.add_argument("--out", default="gpu-check",
                   help="report folder: gpu_check.json and gpu_check.log (default gpu-check)")
    p.add_argument("--work", default=None,
                   help="scratch folder: the carried wheels' site, checkpoints, CuPy's kernel "
                        "cache (default: a new temporary folder)")
    p.add_argument("--preinstalled", action="store_true",
                   help="the machine's own numpy/CuPy/torch/pytest, plus the carried wheels")
    p.add_argument("--wheels", default=str(DEFAULT_WHEELS),
                   help="folder of the carried wheels (default .gpu-wheels/)")
    p.add_argument("--device", default=None, help="CUDA device under test (default cuda:0)")
    p.add_argument("--quick", action="store_true", help="the shorter run (fits 4 minutes)")
    p.add_argument("--jobs", type=int, default=None,
                   help="pytest-xdist workers for cupy_tests, which spread CuPy's cold kernel "
                        "compilation over the cores (default 8 where pytest-xdist is "
                        "installed, else 1)")
    p.add_argument("--self-test", action="store_true",
                   help="CPU self-test: array_api_strict device1 stands in for the GPU")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every item's time budget (the budgets fit one H200; a "
                        "shared CPU machine running the self-test needs more)")
    p.add_argument("--only", default=None, help="comma-separated items to run, in check order")
    p.add_argument("--train-limit", type=int, default=None,
                   help="training images for the accuracy item (default all 60000; 10000 "
                        "with --quick; 1000 with --self-test)")
    p.add_argument("--_state", nargs=2, metavar=("CHECKPOINT", "BACKEND"),
                   help=argparse.SUPPRESS)
    p.add_argument("--_dropout-timing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._state or args._dropout_timing:
        return args
    if args.train_limit is None:
        args.train_limit = 1000 if args.self_test else (10000 if args.quick else None)
    if args.jobs is None:
        args.jobs = 8 if importlib.util.find_spec("xdist") is not None else 1
    args.checkpoint_limit = 500 if args.self_test else (2000 if args.quick else 5000)
    if not args.data_dir:
        p.error("--data-dir DIR is required (DIR/mnist holds the four MNIST .gz files)")
    if not (Path(args.data_dir) / "mnist").is_dir():
        p.error(f"--data-dir: {args.data_dir}/mnist does not exist")
    names = [i.name for i in ITEMS]
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in names]
        if unknown:
            p.error(f"--only: unknown item(s) {', '.join(unknown)}; expected some of "
                    f"{', '.join(names)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._state:
        print(json.dumps(state_roundtrip(*args._state)))
        return 0
    if args._dropout_timing:
        print(json.dumps(dropout_timing()))
        return 0
    only = set(args.only.split(",")) if args.only else None
    if only is not None and args.preinstalled:
        only.add("install")  # everything after it imports the carried packages
    return Check(args).main([i for i in ITEMS if only is None or i.name in only])


if __name__ == "__main__":
    sys.exit(main())
