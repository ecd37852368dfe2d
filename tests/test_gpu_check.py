"""benchmarks/gpu_check.py's own logic, cheap parts (CI also runs the whole check with
``--backend array_api_strict --quick``): the report, the exit status, the offline install and
the items that skip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" /
                                                  "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "mnist").mkdir(parents=True)
    return d


def _report(out: Path) -> dict:
    return json.loads((out / "gpu_check.json").read_text())


def test_offline_install_and_skips_pass(tmp_path, data_dir, capsys):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("pytest\nnumpy\n")  # satisfied: nothing to fetch
    out = tmp_path / "out"
    status = _load().main(["--data-dir", str(data_dir), "--out", str(out), "--backend",
                           "numpy", "--wheels", str(wheels), "--only",
                           "install,dropout_rng,multi_gpu,distributed"])
    printed = capsys.readouterr().out
    report = _report(out)
    assert status == 0 and report["passed"] and report["failed"] == []
    items = {i["item"]: i for i in report["items"]}
    assert items["install"]["status"] == "PASS" and "offline" in items["install"]["detail"]
    assert items["dropout_rng"]["status"] == "SKIP"
    assert items["multi_gpu"]["status"] == "SKIP"
    assert items["distributed"]["status"] in ("SKIP", "PASS")
    assert "PASS  install" in printed and "SKIP  multi_gpu" in printed


def test_a_failing_item_fails_the_check(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("no-such-package-xpnet-test==1.0\n")
    status = _load().main(["--data-dir", str(data_dir), "--out", str(out), "--backend",
                           "numpy", "--wheels", str(wheels), "--only", "install"])
    report = _report(out)
    assert status == 1 and report["failed"] == ["install"]
    assert "FAIL  install" in capsys.readouterr().out


def test_data_dir_is_required_and_checked(tmp_path):
    check = _load()
    with pytest.raises(SystemExit) as info:
        check.parse_args([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        check.parse_args(["--data-dir", str(tmp_path)])  # no mnist/ inside


def test_placement_on_strict_device1(monkeypatch):
    pytest.importorskip("array_api_strict")
    from xpnet import backend as backend_module

    selection = backend_module.selection
    monkeypatch.setattr(selection, "_current", selection._current)  # restored after
    out = _load().placement("array_api_strict", "device1")
    assert out["misplaced"] == [] and out["checked"] > 20
