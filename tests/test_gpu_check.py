"""release/gpu_check.py's own logic, the fast parts: the report rewritten after every item, time
budgets, the strict PASS rules of the CuPy items, the offline install's refusals and the
checkpoint state comparison. CI also runs the whole check as its CPU self-test
(``--preinstalled --self-test --quick``), in the form the GPU machine runs it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "release" /
                                                  "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def check():
    return _load()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "mnist").mkdir(parents=True)
    return d


def _check(module, data_dir, out, *extra):
    return module.Check(module.parse_args(["--data-dir", str(data_dir), "--out", str(out),
                                           "--work", str(out.parent / "work"), *extra]))


def _report(out: Path) -> dict:
    return json.loads((out / "gpu_check.json").read_text())


def test_the_budgets_fit_one_call_on_the_gpu_machine(check):
    full = sum(i.budget_s for i in check.ITEMS)
    quick = sum(i.quick_budget_s for i in check.ITEMS)
    assert full <= check.FULL_LIMIT_S == 480, full
    assert quick <= check.QUICK_LIMIT_S == 240, quick
    names = [i.name for i in check.ITEMS]
    assert names[0] == "install" and len(set(names)) == len(names)
    for needed in ("environment", "cupy_tests", "accuracy", "checkpoint", "nccl", "benchmark"):
        assert needed in names


def test_report_is_rewritten_after_each_item_and_a_cut_item_fails(check, data_dir, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    c = _check(check, data_dir, out)
    seen = {}

    def first(c):
        seen["while_running"] = _report(out)  # written before the first item started
        return "PASS", "fine", {"x": 1}

    def slow(c):
        c.run([sys.executable, "-c", "import time; print('started', flush=True); "
               "time.sleep(60)"])
        return "PASS", "never", {}

    def info(c):
        seen["after_two"] = _report(out)
        return "INFO", "figures", {}

    items = [check.Item("first", first, 30, 30), check.Item("slow", slow, 1, 1),
             check.Item("info", info, 30, 30)]
    status = c.main(items)
    report = _report(out)
    assert seen["while_running"]["pending"] == ["first", "slow", "info"]
    assert seen["while_running"]["finished"] is False and not seen["while_running"]["passed"]
    assert [i["item"] for i in seen["after_two"]["items"]] == ["first", "slow"]
    assert seen["after_two"]["pending"] == ["info"]
    assert status == 1 and report["failed"] == ["slow"] and report["finished"]
    by = {i["item"]: i for i in report["items"]}
    assert by["slow"]["status"] == "FAIL" and "cut at its 1 s budget" in by["slow"]["detail"]
    assert by["slow"]["seconds"] < 30  # the sleeping process was killed at the budget
    assert by["info"]["status"] == "INFO"  # INFO never fails the check
    assert report["backend_under_test"] == "cupy" and report["device_under_test"]
    assert "FAIL  slow" in capsys.readouterr().out


def test_an_item_that_raises_is_its_own_fail(check, data_dir, tmp_path):
    out = tmp_path / "out"

    def boom(c):
        raise KeyError("history")

    status = _check(check, data_dir, out).main([check.Item("boom", boom, 5, 5)])
    (item,) = _report(out)["items"]
    assert status == 1 and item["status"] == "FAIL" and "KeyError" in item["detail"]


def test_arguments_are_checked(check, tmp_path, data_dir):
    with pytest.raises(SystemExit) as info:
        check.parse_args([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        check.parse_args(["--data-dir", str(tmp_path)])  # no mnist/ inside
    with pytest.raises(SystemExit):
        check.parse_args(["--data-dir", str(data_dir), "--only", "accuracy,speed"])
    args = check.parse_args(["--data-dir", str(data_dir), "--quick"])
    assert args.train_limit == 10000 and not args.self_test


def test_install_names_the_missing_wheel_and_the_fetch_command(check, data_dir, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "array_api_compat-1.16.0-py3-none-any.whl").write_bytes(b"")
    c = _check(check, data_dir, tmp_path / "out", "--preinstalled", "--wheels", str(wheels))
    status, detail, _ = check.install(c)
    assert status == "FAIL"
    assert "array_api_extra, array_api_strict" in detail and "fetch_gpu_wheels.sh" in detail
    c = _check(check, data_dir, tmp_path / "out2")
    assert check.install(c)[0] == "SKIP"  # without --preinstalled


PYTEST_V = """\
tests/test_ops.py::test_a[cupy] PASSED                                   [ 10%]
tests/test_ops.py::test_b[cupy] SKIPPED (cupy backend unavailable: no GPU) [ 20%]
[gw1] [ 30%] PASSED tests/test_ops.py::test_c[cupy]
[gw0] [ 40%] FAILED tests/test_ops.py::test_d[cupy]
=========================== short test summary info ============================
SKIPPED [1] tests/conftest.py:77: cupy backend unavailable: no GPU
FAILED tests/test_ops.py::test_d[cupy] - AssertionError
"""


def test_pytest_outcomes_counts_plain_and_xdist_lines(check):
    out = check.pytest_outcomes(PYTEST_V)
    assert out["counts"] == {"PASSED": 2, "SKIPPED": 1, "FAILED": 1}
    assert out["failed"] == ["tests/test_ops.py::test_d[cupy]"]
    assert out["skip_reasons"] == ["cupy backend unavailable: no GPU"]


@pytest.mark.parametrize("stdout, code, verdict", [
    ("\n".join(f"tests/t.py::test_{i}[cupy] PASSED" for i in range(400))
     + "\n=== 400 passed in 60s ===", 0, "PASS"),
    ("\n".join(f"tests/t.py::test_{i}[cupy] PASSED" for i in range(399))
     + "\n=== 399 passed in 60s ===", 0, "only 399"),
    ("tests/t.py::test_0[cupy] SKIPPED\n" + "\n".join(
        f"tests/t.py::test_{i}[cupy] PASSED" for i in range(1, 450))
     + "\nSKIPPED [1] tests/conftest.py:77: cupy backend unavailable: CUDA driver"
     + "\n=== 449 passed, 1 skipped ===", 0, "CuPy could not run"),
    ("tests/t.py::test_0[cupy] SKIPPED\n"
     "SKIPPED [504] tests/conftest.py:77: cupy backend unavailable: no device\n"
     "=== 504 skipped ===", 0, "CuPy could not run"),
    ("tests/t.py::test_0[cupy] FAILED\n=== 1 failed ===", 1, "failed"),
])
def test_cupy_tests_pass_only_when_enough_cupy_cases_really_ran(check, data_dir, tmp_path,
                                                                monkeypatch, stdout, code,
                                                                verdict):
    c = _check(check, data_dir, tmp_path / "out", "--jobs", "1")
    monkeypatch.setattr(c, "run", lambda cmd, env=None: subprocess.CompletedProcess(
        cmd, code, stdout, ""))
    status, detail, data = check.cupy_tests(c)
    if verdict == "PASS":
        assert status == "PASS", detail
        assert data["counts"]["PASSED"] == 400 and data["minimum"] == 400
    else:
        assert status == "FAIL" and verdict in detail, detail


def test_the_nccl_item_fails_when_its_test_skipped_or_is_missing(check, data_dir, tmp_path,
                                                                 monkeypatch):
    c = _check(check, data_dir, tmp_path / "out")
    for stdout, code, says in [
            ("tests/test_distributed.py::test_x_nccl SKIPPED\n"
             "SKIPPED [1] tests/test_distributed.py:9: NCCL unavailable\n=== 1 skipped ===", 0,
             "did not run"),
            ("=== 5 deselected ===", 5, "no test")]:
        monkeypatch.setattr(c, "run", lambda cmd, env=None, o=stdout, r=code:
                            subprocess.CompletedProcess(cmd, r, o, ""))
        status, detail, _ = check.nccl(c)
        assert status == "FAIL" and says in detail, detail


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_the_self_test_skips_the_cupy_items_naming_why(check, data_dir, tmp_path):
    out = tmp_path / "out"
    status = check.main(["--data-dir", str(data_dir), "--out", str(out), "--work",
                         str(tmp_path / "work"), "--self-test", "--only", "cupy_tests,nccl"])
    items = _report(out)["items"]
    assert status == 0 and [i["status"] for i in items] == ["SKIP", "SKIP"]
    for item in items:
        assert "needs CuPy on a CUDA GPU" in item["detail"] and "cupy" in item["detail"]


def test_state_roundtrip_is_bit_exact_on_strict_device1(check, tmp_path, monkeypatch):
    pytest.importorskip("array_api_strict")
    from xpnet import backend as backend_module
    from xpnet.io.checkpoint import save_checkpoint
    from xpnet.models import SimpleConvNet

    selection = backend_module.selection
    monkeypatch.setattr(selection, "_current", selection._current)  # restored after
    state = SimpleConvNet(seed=3).state_dict()
    path = save_checkpoint(tmp_path / "ck.npz", state)
    monkeypatch.setenv("XPNET_DEVICE", "device1")  # as the check's subprocess gets it
    out = check.state_roundtrip(str(path), "array_api_strict")
    assert out["differ"] == [] and out["misplaced"] == [] and out["checked"] == len(state)
    assert "device1" in out["device"]
    # the comparison sees a change in the last bit of one value
    real = SimpleConvNet.state_dict

    def nudged(self):
        out = real(self)
        key = next(iter(out))
        out[key] = np.nextafter(out[key], np.float32(np.inf))
        return out

    monkeypatch.setattr(SimpleConvNet, "state_dict", nudged)
    assert check.state_roundtrip(str(path), "array_api_strict")["differ"] == [next(iter(state))]


@pytest.mark.parametrize("half_accuracy, verdict", [(0.9890, "PASS"), (0.9850, "FAIL")])
def test_accuracy_also_holds_mixed16_to_float32(check, data_dir, tmp_path, monkeypatch,
                                                half_accuracy, verdict):
    """On the GPU the accuracy item also runs mixed16 on CuPy, at the same time, and passes
    only when it is within the tolerance of CuPy's float32 run."""
    c = _check(check, data_dir, tmp_path / "out")

    def run(backend, acc):
        return {"backend": backend, "device": "cuda:0" if backend == "cupy" else "cpu",
                "test_accuracy": acc, "train_seconds": 1.0, "train_images": 60000}

    started = []
    monkeypatch.setattr(c, "start", lambda cmd, env=None: started.append(cmd) or "half")
    monkeypatch.setattr(c, "finish", lambda proc: proc)
    monkeypatch.setattr(c, "json_of", lambda proc: run("cupy", half_accuracy))
    monkeypatch.setattr(check, "_pair", lambda c, a, b, backends: (run("cupy", 0.9880),
                                                                   run("numpy", 0.9875)))
    status, detail, data = check.accuracy(c)
    assert status == verdict, detail
    assert ["--precision", "mixed16"] == started[0][-2:] and "mixed16" in detail
    assert data["mixed16_difference"] == round(abs(half_accuracy - 0.9880), 5)
