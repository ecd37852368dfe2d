"""Plots (xpnet/plot.py): PNGs are written; a missing matplotlib names the extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from xpnet import plot


def _history(n=3):
    return [{"epoch": i + 1, "loss": 1.0 / (i + 1), "train_acc": 0.5 + 0.1 * i,
             "test_loss": 1.1 / (i + 1), "test_acc": 0.45 + 0.1 * i} for i in range(n)]


def test_learning_curves_and_boundaries_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot.learning_curves({"a": _history(), "b": _history(40)}, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    out = plot.decision_boundaries({"sign": lambda p: (p[:, 0] > 0).astype(int)}, x, y,
                                   tmp_path / "b.png", resolution=30)
    assert out.stat().st_size > 1000


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "xpnet\[plot\]"'):
        plot.learning_curves(_history(), tmp_path / "c.png")
