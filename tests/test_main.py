"""The command line: ``python -m xpnet info`` and ``python -m xpnet smoke`` (xpnet/__main__.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xpnet
from xpnet import backend as backend_module
from xpnet.__main__ import main
from xpnet.backend.hints import install_command

ROOT = Path(__file__).resolve().parents[1]
NAMES = backend_module.BACKENDS[1:]  # numpy, cupy, torch, array_api_strict
CUPY_HINT = install_command("cupy12")


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    """No inherited selection from the environment; the numpy backend restored afterwards."""
    monkeypatch.delenv("XPNET_BACKEND", raising=False)
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    yield
    xpnet.set_backend("numpy")


def _cuda_usable() -> bool:
    return backend_module.cuda_status()[0]


# ----------------------------------------------------------------------------- info
def test_info_lists_every_backend_and_exits_0(capsys):
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    for name in NAMES:
        assert re.search(rf"^\s+{name}\s+(yes|no)\s", out, re.MULTILINE), name
    assert f"xpnet {xpnet.__version__}" in out
    assert "auto -> " in out and "Selected: " in out
    assert err == ""


def test_info_names_the_faster_backend_for_conv_nets(capsys):
    """With torch installed, info points conv nets at the torch backend; without, at NumPy."""
    from xpnet.info import conv_advice
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("conv nets: "))
    have_torch = "torch" in xpnet.backend.available_backends() and not \
        xpnet.backend.available_backends()["torch"].startswith("unavailable")
    assert ("torch backend" in line) == have_torch
    assert "torch backend runs torch's own convolutions" in conv_advice(
        {"torch": {"available": True}})
    assert "NumPy" in conv_advice({"torch": {"available": False, "reason": "not installed"}})


def test_info_subprocess():
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPNET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "xpnet", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr


def test_info_json_parses(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["backends"]) == set(NAMES)
    assert info["backends"]["numpy"]["available"] is True
    assert info["xpnet"] == xpnet.__version__
    assert info["auto"]["choice"] in ("numpy", "cupy")
    assert set(info["devices"]) == {"cupy", "torch_cuda", "array_api_strict"}
    assert info["selection"]["backend"] == info["auto"]["choice"]
    root = str(Path(xpnet.__file__).resolve().parents[1])  # these tests run from a checkout
    assert info["installed_from"] == {"kind": "editable", "path": root}


def test_info_says_how_xpnet_was_installed(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"Installed from the checkout {ROOT} (editable)" in out


def test_info_leaves_the_selected_backend_alone(monkeypatch, capsys):
    before = xpnet.set_backend("numpy")
    monkeypatch.setenv("XPNET_BACKEND", "array_api_strict")
    main(["info"])
    capsys.readouterr()
    assert xpnet.current() is before


@pytest.mark.skipif(_cuda_usable(), reason="CuPy and a CUDA GPU are present: cupy is usable")
def test_info_with_unusable_cupy_exits_1_with_install_command(monkeypatch, capsys):
    monkeypatch.setenv("XPNET_BACKEND", "cupy")
    assert main(["info"]) == 1  # a run-time error: the library/GPU cannot run here
    out, err = capsys.readouterr()
    for name in NAMES:  # the table is still printed
        assert name in out
    assert CUPY_HINT in err or "no NVIDIA driver/GPU on this machine" in err
    assert err.startswith("xpnet: error: ") and "Traceback" not in err


def test_info_with_unknown_backend_lists_valid_names(monkeypatch, capsys):
    monkeypatch.setenv("XPNET_BACKEND", "bogus")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err
    for name in backend_module.BACKENDS:
        assert name in err


# ----------------------------------------------------------------------------- smoke
def _losses(out: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"^step (\d+): loss ([\d.]+)$", out, re.M)}


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch"])
def test_smoke_loss_decreases(name, capsys):
    if name != "numpy":
        pytest.importorskip(name)
    assert main(["smoke", "--steps", "30", "--backend", name]) == 0
    out = capsys.readouterr().out
    assert f"backend {name}" in out
    losses = _losses(out)
    assert set(losses) == {0, 30}
    assert losses[30] < losses[0]
    assert "xpnet smoke: OK" in out


def test_smoke_reads_xpnet_backend(monkeypatch, capsys):
    monkeypatch.setenv("XPNET_BACKEND", "numpy")
    assert main(["smoke", "--steps", "5"]) == 0
    assert "backend numpy" in capsys.readouterr().out


def test_smoke_unknown_backend_exits_2_without_traceback(capsys):
    assert main(["smoke", "--backend", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected one of" in err


def test_smoke_rejects_nonpositive_steps(capsys):
    assert main(["smoke", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
