"""The benchmark protocol (benchmarks/protocol.py, benchmarks/run.py): the environment each side
runs in, what its JSON records, which rounds count, and the busy-core scenario. No timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import protocol  # noqa: E402
import run  # noqa: E402

HANDICAP = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}


def test_child_env_drops_the_openblas_variables_and_sets_threads():
    env = protocol.child_env(3, base={"PATH": "/bin", **HANDICAP}, XPNET_BACKEND="numpy")
    assert not set(HANDICAP) & set(env)
    assert env["PATH"] == "/bin" and env["XPNET_BACKEND"] == "numpy"
    assert all(env[v] == "3" for v in protocol.THREAD_VARIABLES)


def test_prepare_this_process_drops_them_here(monkeypatch):
    for k, v in HANDICAP.items():
        monkeypatch.setenv(k, v)
    for v in protocol.THREAD_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    protocol.prepare_this_process(2)
    assert not set(HANDICAP) & set(os.environ)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"


CHILD = """
import json, os, sys
import numpy
print("a line before the result")
print(json.dumps({"seen": {k: os.environ.get(k) for k in sys.argv[1:]}, "images_per_s": 1.0}))
"""


def test_a_side_runs_without_them_and_its_json_records_blas_threads_and_load(tmp_path):
    """Through run.py's path (the wrapper, the protocol environment, the load record): the
    child sees neither variable, and its JSON gains BLAS, torch-thread and load records."""
    script = tmp_path / "side.py"
    script.write_text(CHILD)
    base = dict(os.environ, **HANDICAP)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "protocol.py"), str(script), *HANDICAP]
    res = protocol.timed_run(cmd, protocol.child_env(1, base=base), ROOT)
    assert res["seen"] == {k: None for k in HANDICAP}
    proto = res["protocol"]
    assert proto["handicap_variables"] == {k: None for k in HANDICAP}
    assert proto["torch_threads"] is None  # torch never loaded in this side
    assert isinstance(proto["load_before"], float) and isinstance(proto["load_after"], float)
    blas = proto["blas"]
    assert blas and {"internal_api", "architecture", "num_threads", "version"} <= set(blas[0])
    assert blas[0]["num_threads"] == 1


def test_torch_thread_count_is_recorded():
    torch = pytest.importorskip("torch")
    assert protocol.runtime_info()["torch_threads"] == torch.get_num_threads()


def fake_bench(loads):
    """A stand-in for run.bench: each call returns the next (img/s, load) pair."""
    it = iter(loads)

    def bench(impl, model, args, **kw):
        ips, load = next(it)
        return {"impl": impl, "images_per_s": ips, "test_accuracy": 0.9, "peak_rss_mb": 1.0,
                "protocol": {"load_before": 0.1, "load_after": load}}
    return bench


def test_a_round_with_load_above_the_cores_is_flagged_and_left_out_of_the_median(
        monkeypatch):
    monkeypatch.setattr(protocol, "cores", lambda: 2)
    # rounds of (torch, xpnet) for DeepConvNet alone; round 2 ends overloaded and is the slow one
    monkeypatch.setattr(run, "bench", fake_bench([(100, 1.0), (80, 1.0),
                                                  (10, 5.0), (1, 1.0),
                                                  (100, 1.5), (90, 1.9)]))
    args = run.main_parser().parse_args(["--models", "deep", "--rounds", "3"])
    run.EXTRA_BACKENDS[:] = []
    row = run.main_table(args)["summary"]["deep"]
    assert row["torch"]["runs_flagged"] == [False, True, False]
    assert row["xpnet"]["runs_flagged"] == [False, True, False]
    assert row["torch"]["images_per_s"] == 100 and row["xpnet"]["images_per_s"] == 85
    assert row["ratio_vs_torch_rounds"] == [0.8, 0.9]


def test_busy_raises_the_load_limit_by_its_one_core(monkeypatch):
    monkeypatch.setattr(protocol, "cores", lambda: 2)
    parser = run.main_parser()
    assert run.load_limit(parser.parse_args([])) == 2
    assert run.load_limit(parser.parse_args(["--busy"])) == 3


def test_every_round_flagged_gives_no_median():
    runs = [{"x": 1.0, "flagged": True}, {"x": 2.0, "flagged": True}]
    assert protocol.median(runs, "x") is None
    assert protocol.median([{"x": 1.0}, {"x": 3.0, "flagged": False}], "x") == 2.0


def test_help_states_the_rule():
    text = " ".join(run.main_parser().format_help().split())
    assert "flagged and excluded from the medians" in text and "OPENBLAS_CORETYPE" in text


def _wait_for(cond, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that was reaped is gone; one not yet reaped shows state Z
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_busy_core_pins_one_process_and_always_stops_it():
    core = max(os.sched_getaffinity(0))
    with pytest.raises(RuntimeError, match="inside"):
        with protocol.busy_core(core) as pid:
            assert _wait_for(lambda: os.sched_getaffinity(pid) == {core})
            raise RuntimeError("inside")
    assert not _alive(pid)


def test_busy_loop_stops_itself_after_its_bound():
    proc = subprocess.Popen([sys.executable, "-c", protocol.BUSY_LOOP,
                             str(max(os.sched_getaffinity(0))), "0.2", str(os.getpid())])
    assert proc.wait(timeout=30) == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_busy_loop_stops_when_the_process_that_started_it_is_killed():
    """A SIGKILLed benchmark never runs busy_core's finally: the loop notices its parent is
    gone and stops instead of holding a core for its whole bound."""
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]); import protocol\n"
         "with protocol.busy_core() as pid:\n"
         "    print(pid, flush=True); time.sleep(600)\n", str(ROOT / "benchmarks")],
        stdout=subprocess.PIPE, text=True)
    pid = int(starter.stdout.readline())
    assert _alive(pid)
    starter.kill()
    starter.wait(timeout=30)
    assert _wait_for(lambda: not _alive(pid))


def test_the_scripts_json_carries_the_protocol(tmp_path):
    """benchmarks/layers.py writes a dict with a protocol record (not a bare list)."""
    src = (ROOT / "benchmarks" / "layers.py").read_text()
    assert '"protocol": protocol.runtime_info()' in src
    for name in ("xpnet_bench.py", "layers.py", "conv_gemm_floor.py", "profile_step.py",
                 "distributed_bench.py"):
        text = (ROOT / "benchmarks" / name).read_text()
        assert "protocol." in text and "OPENBLAS_NUM_THREADS\"" not in text, name
    json.dumps(protocol.runtime_info())  # serialisable
