"""The scaling benchmark (benchmarks/scaling.py): a point's record, the plan of points, the
medians over the rounds that count, the tables, and one tiny end-to-end run through the
protocol. No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scaling  # noqa: E402
import torch_nets  # noqa: E402
from conftest import use_backend  # noqa: E402

POINT_KEYS = {"model", "batch", "width", "filters", "steps", "warmup", "ms_per_step",
              "images_per_s", "last_loss", "peak_rss_mb"}


def tiny(model: str, filters: int | None = None) -> dict:
    return {"model": model, "batch": 8, "width": 1, "filters": filters, "steps": 2,
            "warmup": 1}


def check_point(res: dict, point: dict) -> None:
    assert set(res) == POINT_KEYS
    assert {k: res[k] for k in point} == point  # the point's spec comes back unchanged
    assert res["ms_per_step"] > 0 and res["images_per_s"] > 0 and res["peak_rss_mb"] > 0
    # images/s and ms/step describe the same loop
    assert res["images_per_s"] == pytest.approx(8 * 1e3 / res["ms_per_step"], rel=1e-2)
    assert math.isfinite(res["last_loss"]) and res["last_loss"] > 0


@pytest.mark.parametrize("model,filters", [("mlp", None), ("cnn", 6), ("deep", None)])
def test_a_point_on_numpy_trains_and_reports(model, filters):
    point = tiny(model, filters)
    with use_backend("numpy"):
        res = scaling.measure_point("xpnet-numpy", point)
    check_point(res, point)


@pytest.mark.parametrize("side", ["xpnet-torch", "torch"])
def test_a_point_on_the_torch_sides(side):
    pytest.importorskip("torch")
    point = tiny("cnn", 4)
    with use_backend("numpy"):  # the xpnet-torch side selects torch; restored afterwards
        res = scaling.measure_point(side, point)
    check_point(res, point)


def test_an_unknown_side_or_torch_model_is_refused_by_name():
    with pytest.raises(ValueError, match="side 'jax' unknown"):
        scaling.measure_point("jax", tiny("mlp"))
    with pytest.raises(ValueError, match="model 'rnn' unknown"):
        torch_nets.torch_net("rnn")
    with pytest.raises(ValueError, match="filters must be a positive int, got 0"):
        torch_nets.torch_net("cnn", 0)


def test_the_plan_fixes_steps_by_model_batch_and_width():
    groups = scaling.plan(["mlp", "deep"], [64, 32], [4, 1], 100, work=1.0)
    assert [(g, m) for g, m, _ in groups] == [("batch", "mlp"), ("batch", "deep"),
                                             ("width", "cnn")]
    mlp = groups[0][2]
    assert [p["batch"] for p in mlp] == [32, 64]  # smallest first: peak RSS is per point
    assert [p["steps"] for p in mlp] == [1000, 500]
    assert all(p["filters"] is None for p in mlp)
    width = groups[2][2]
    assert [(p["filters"], p["batch"], p["steps"]) for p in width] == [(30, 100, 40),
                                                                       (120, 100, 10)]
    # a tiny --work keeps the minimum of steps and one warm-up step
    assert scaling.point_steps("deep", 1024, work=0.001) == (scaling.MIN_STEPS, 1)


def fake_run(side: str, rnd: int, ms: float, flagged: bool) -> dict:
    return {"side": side, "group": "batch", "model": "mlp", "round": rnd, "flagged": flagged,
            "points": [dict(tiny("mlp"), batch=32, ms_per_step=ms,
                            images_per_s=32e3 / ms, last_loss=2.3, peak_rss_mb=100.0 + ms)]}


def test_medians_skip_flagged_rounds_and_ratios_compare_with_pytorch():
    sides = ["xpnet-numpy", "torch"]
    runs = [fake_run("xpnet-numpy", 1, 1.0, False), fake_run("torch", 1, 2.0, False),
            fake_run("xpnet-numpy", 2, 100.0, True), fake_run("torch", 2, 100.0, True),
            fake_run("xpnet-numpy", 3, 3.0, False), fake_run("torch", 3, 3.0, False)]
    [row] = scaling.summarize(runs, sides)
    mine, theirs = row["sides"]["xpnet-numpy"], row["sides"]["torch"]
    assert mine["ms_per_step"] == 2.0 and theirs["ms_per_step"] == 2.5  # round 2 left out
    assert mine["runs_ms_per_step"] == [1.0, 100.0, 3.0]
    assert mine["runs_flagged"] == [False, True, False]
    assert row["ratio_vs_torch"] == {"xpnet-numpy": 1.25}
    assert row["ratio_vs_torch_rounds"] == {"xpnet-numpy": [2.0, 1.0]}
    table = scaling.markdown([row], sides)
    assert "| TwoLayerNet | 32 | 2 | 2.00 | 2.50 |" in table and "| 1.25x |" in table


def test_every_round_flagged_gives_nan_not_a_figure():
    sides = ["xpnet-numpy", "torch"]
    runs = [fake_run("xpnet-numpy", 1, 1.0, True), fake_run("torch", 1, 2.0, True)]
    [row] = scaling.summarize(runs, sides)
    assert row["sides"]["torch"]["ms_per_step"] is None
    assert row["ratio_vs_torch"] == {"xpnet-numpy": None}
    assert "| TwoLayerNet | 32 | 2 | nan | nan | nan | nan | nan |" in scaling.markdown(
        [row], sides)


def test_one_tiny_round_end_to_end(tmp_path):
    """The parent starts each side through the protocol; the JSON holds the summary and every
    raw run with its protocol record."""
    out = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--sides", "xpnet-numpy",
         "--models", "mlp", "--batches", "8", "16", "--widths", "1", "--width-batch", "8",
         "--work", "1e-6", "--rounds", "1", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Step time against batch size" in proc.stdout
    res = json.loads(out.read_text())
    assert [(r["group"], r["batch"], r["filters"]) for r in res["summary"]] == [
        ("batch", 8, None), ("batch", 16, None), ("width", 8, 30)]
    [batch_run, width_run] = res["raw"]
    assert batch_run["side"] == "xpnet-numpy" and batch_run["threads"] == 1
    proto = batch_run["protocol"]
    assert {"blas", "torch_threads", "load_before", "load_after"} <= set(proto)
    assert proto["handicap_variables"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    assert isinstance(batch_run["flagged"], bool)
    assert [p["steps"] for p in batch_run["points"]] == [2, 2]
