"""Module.summary (xpnet/summary.py): the layer table with and without an input shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import xpnet
from xpnet.models import MultiLayerNet, SimpleConvNet

ROOT = Path(__file__).resolve().parents[1]


def test_summary_without_input_shape_lists_layers_and_counts(backend):
    model = MultiLayerNet(6, [8], 3, batchnorm=True, seed=0)
    model[0].freeze()
    lines = model.summary().splitlines()
    assert lines[0].split() == ["layer", "type", "params", "trainable"]
    assert set(lines[1]) == {"-"}
    assert [line.split() for line in lines[2:-1]] == [
        ["0", "Linear", "56", "0"], ["1", "BatchNorm", "16", "16"], ["2", "ReLU", "0", "0"],
        ["3", "Linear", "27", "27"]]
    assert lines[-1].startswith("total: 99 parameters, 43 trainable, 56 frozen; for output "
                                "shapes pass the shape of one example")


def test_summary_with_and_without_shape_agree_on_counts(backend):
    model = SimpleConvNet(seed=0)
    plain = [line.split() for line in model.summary().splitlines()[2:-1]]
    shaped = [line.split() for line in model.summary((1, 28, 28)).splitlines()[2:-1]]
    assert [row[:2] + row[-2:] for row in plain] == [row[:2] + row[-2:] for row in shaped]
    assert shaped[0][2:6] == ["(N,", "30,", "12,", "12)"]
    assert plain[3] == ["3", "Linear", "432,100", "432,100"]


def test_summary_of_a_bare_layer_is_one_row():
    lines = xpnet.Linear(3, 2).summary().splitlines()
    assert lines[2].split() == ["(model)", "Linear", "8", "8"]


def test_bad_input_shape_is_still_refused():
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
        xpnet.Linear(3, 2).summary(3)


def test_importing_module_does_not_load_summary():
    """summary depends on module, not the reverse at import time: no import cycle."""
    code = ("import sys, xpnet.module, xpnet; "
            "print('xpnet.summary' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120, check=True)
    assert out.stdout.strip() == "False"
