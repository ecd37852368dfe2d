"""The paired-steps benchmark (benchmarks/paired_steps.py): the pair-by-pair summary, its
refusals, and one tiny end-to-end run through the protocol's environment. No timing is
asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paired_steps.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import paired_steps  # noqa: E402


def test_summary_takes_the_ratio_pair_by_pair():
    # pair ratios (torch / xpnet) 1.0, 0.5 and 2.0: median 1.0, where the ratio of the two
    # medians (0.1 / 0.2) would say 0.5
    times = {"torch": [0.3, 0.1, 0.1], "xpnet-numpy": [0.3, 0.2, 0.05]}
    s = paired_steps.summarize(times, window=2)
    assert s["torch"] == {"median_ms": 100.0}
    assert s["xpnet-numpy"]["median_ms"] == 200.0
    assert s["xpnet-numpy"]["speed_vs_ref"] == 1.0
    assert s["xpnet-numpy"]["windows"] == [0.75, 2.0]


def test_summary_refuses_unpaired_times():
    with pytest.raises(ValueError, match="reference side 'torch' has no times"):
        paired_steps.summarize({"xpnet-numpy": [0.1]})
    with pytest.raises(ValueError, match="same, non-zero number of steps"):
        paired_steps.summarize({"torch": [0.1, 0.2], "xpnet-numpy": [0.1]})
    with pytest.raises(ValueError, match="same, non-zero number of steps"):
        paired_steps.summarize({"torch": [], "xpnet-numpy": []})


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_a_tiny_paired_run(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "paired.json"
    proc = _run("--model", "mlp", "--pairs", "3", "--window", "2", "--gap", "0",
                "--warmup", "1", "--batch", "8", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())
    assert rec["sides"] == ["xpnet-numpy", "torch"]
    assert {side: len(ts) for side, ts in rec["times_s"].items()} == {"xpnet-numpy": 3,
                                                                     "torch": 3}
    entry = rec["summary"]["xpnet-numpy"]
    assert entry["speed_vs_ref"] > 0 and len(entry["windows"]) == 2
    assert entry["images_per_s"] == pytest.approx(8e3 / entry["median_ms"], rel=1e-3)
    for side in ("xpnet-numpy", "torch"):  # each worker ran under the protocol's environment
        info = rec["protocol"][side]
        assert info["handicap_variables"] == {"OPENBLAS_CORETYPE": None,
                                              "OPENBLAS_L2_SIZE": None}
        assert all(lib["num_threads"] == 2 for lib in info["blas"])
    assert rec["protocol"]["torch"]["torch_threads"] == 2
    assert "xpnet-numpy:" in proc.stdout and "x torch per pair" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--sides", "xpnet-numpy"], "--sides must name torch"),
    (["--sides", "torch", "torch"], "--sides must name torch"),
    (["--pairs", "0"], "--pairs must be at least 1"),
    (["--gap", "-1"], "must not be negative"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    proc = _run(*args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr
