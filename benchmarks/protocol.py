#!/usr/bin/env python3
"""The benchmark protocol: the environment every side runs in, what each run records, and
which rounds count. The one copy, used by run.py and every script in benchmarks/.

- **Environment.** ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed for every side
  (xpnet, PyTorch, the textbook NumPy script): a machine that sets them forces OpenBLAS onto
  other kernels (AVX2 on an AVX-512 CPU) and a user's machine does not set them. The thread
  variables are set to the run's thread count.
- **Records.** Each run's JSON gains ``protocol``: the BLAS libraries threadpoolctl sees (name,
  kernel ``architecture``, ``internal_api``, version, thread count), torch's thread count when
  torch ran, and the 1-minute load average before and after the run.
- **Rounds.** A round in which any run started or ended with a load average above the core
  count (plus the busy-loop processes the scenario itself started) is flagged and excluded
  from the medians; its figures stay in the JSON.

Run as a script it is the wrapper run.py starts each side through:

    python benchmarks/protocol.py SCRIPT [ARGS...]

runs SCRIPT as ``__main__`` (its own argv and sys.path) and adds the run's BLAS and torch
thread records to the JSON object on its last stdout line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

#: variables that switch OpenBLAS onto other kernels or cache sizes than it detects itself
HANDICAP_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: variables through which each side gets the run's thread count
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def child_env(threads: int | None = None, base: Mapping[str, str] | None = None,
              **extra: str) -> dict[str, str]:
    """The environment a benchmark side runs in: ``base`` (default: this process's) without
    :data:`HANDICAP_VARIABLES`, with the thread variables at ``threads`` (when given) and
    ``extra`` on top."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in HANDICAP_VARIABLES}
    if threads is not None:
        env.update({var: str(threads) for var in THREAD_VARIABLES})
    env.update(extra)
    return env


def prepare_this_process(threads: int | None = None) -> None:
    """For a script run directly: apply :func:`child_env` to this process. Call it before
    NumPy or torch is imported (OpenBLAS reads the variables when it loads)."""
    env = child_env(threads)
    for var in HANDICAP_VARIABLES:
        os.environ.pop(var, None)
    os.environ.update({k: env[k] for k in THREAD_VARIABLES if k in env})


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return 0.0


def runtime_info() -> dict[str, Any]:
    """What this process ran with: every BLAS library threadpoolctl sees (its kernel and
    thread count) and torch's thread count when torch is loaded."""
    info: dict[str, Any] = {"handicap_variables": {v: os.environ.get(v)
                                                    for v in HANDICAP_VARIABLES}}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "architecture", "version",
                                                  "num_threads", "prefix", "filepath")}
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    torch = sys.modules.get("torch")
    info["torch_threads"] = torch.get_num_threads() if torch is not None else None
    return info


def overloaded(run: Mapping[str, Any], limit: float) -> bool:
    """Whether a run started or ended with a load average above ``limit``."""
    proto = run.get("protocol", {})
    return max(proto.get("load_before", 0.0), proto.get("load_after", 0.0)) > limit


def flag_rounds(rounds: Sequence[Sequence[dict[str, Any]]], limit: float) -> list[bool]:
    """Flag each round (the runs of one interleaved pass) in which any run was
    :func:`overloaded`; mark its runs ``"flagged": True``. Returns the flags."""
    flags = []
    for runs in rounds:
        flag = any(overloaded(r, limit) for r in runs)
        for r in runs:
            r["flagged"] = flag
        flags.append(flag)
    return flags


def counted(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that count: those not flagged."""
    return [r for r in runs if not r.get("flagged")]


def median(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    """The median of ``key`` over the runs that count, None when every round was flagged."""
    values = [r[key] for r in counted(runs)]
    return statistics.median(values) if values else None


def timed_run(cmd: Sequence[str], env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """Run one benchmark side, parse the JSON object on its last stdout line, and add the load
    average before and after to its ``protocol`` record."""
    before = load_average()
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=dict(env), cwd=cwd)
    after = load_average()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    res.setdefault("protocol", {}).update(load_before=before, load_after=after)
    return res


# stops at its deadline, or as soon as the process that started it is gone (killed by a
# signal, its finally blocks never run)
BUSY_LOOP = ("import os, sys, time\n"
             "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
             "end = time.monotonic() + float(sys.argv[2])\n"
             "parent = int(sys.argv[3])\n"
             "while time.monotonic() < end and os.getppid() == parent:\n"
             "    for _ in range(100000):\n"
             "        pass\n")


@contextlib.contextmanager
def busy_core(core: int | None = None, max_seconds: float = 3600.0) -> Iterator[int]:
    """One busy-loop process pinned to one core (default: the last usable one) while the
    block runs. It is stopped on exit, whatever happens inside, and stops itself after
    ``max_seconds``, or as soon as this process is gone (a SIGTERM or SIGKILL skips the
    ``finally`` that stops it). Yields the process id."""
    if core is None:
        core = max(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(core), str(max_seconds),
                             str(os.getpid())])
    try:
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wrap(argv: list[str]) -> int:
    """Run argv[0] as ``__main__`` with argv[1:], then add :func:`runtime_info` to the JSON
    object on its last stdout line (other lines pass through)."""
    script = Path(argv[0]).resolve()
    sys.argv = [str(script), *argv[1:]]
    sys.path[0] = str(script.parent)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            sys.stdout.write(out.getvalue())
            raise
    lines = out.getvalue().rstrip("\n").splitlines()
    if lines:
        try:
            res = json.loads(lines[-1])
        except json.JSONDecodeError:
            res = None
        if isinstance(res, dict):
            res.setdefault("protocol", {}).update(runtime_info())
            lines[-1] = json.dumps(res)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/protocol.py SCRIPT [ARGS...]")
    sys.exit(_wrap(sys.argv[1:]))
