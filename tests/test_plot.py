"""Plots (xpnet/plot.py): PNGs are written; a missing matplotlib names the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from xpnet import plot
from xpnet.train.state import History


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


def _trained_history(epochs: int, steps: int) -> History:
    """A History as the Trainer fills it: per-epoch records and per-step losses."""
    h = History()
    for e in range(1, epochs + 1):
        losses = [2.0 / (1 + (e - 1) * steps + j) for j in range(steps)]
        h.steps += [{"step": (e - 1) * steps + j + 1, "epoch": e, "loss": v, "lr": 0.1}
                    for j, v in enumerate(losses)]
        h.records.append({"epoch": e, "loss": sum(losses) / steps, "train_acc": 0.8 + 0.01 * e,
                          "test_loss": 0.5 / e, "test_acc": 0.85 + 0.01 * e})
    return h


@pytest.fixture
def figures(monkeypatch):
    """The figures learning_curves saves, kept open for inspection."""
    pytest.importorskip("matplotlib")
    kept = []

    def keep(fig, plt, path):
        kept.append(fig)
        fig.savefig(path, dpi=100)
        return Path(path)

    monkeypatch.setattr(plot, "_save", keep)
    yield kept
    import matplotlib.pyplot as plt
    for fig in kept:
        plt.close(fig)


def _line(ax, label_start: str):
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    assert len(lines) == 1, [ln.get_label() for ln in ax.get_lines()]
    return lines[0]


def test_one_epoch_run_shows_per_step_losses_whole_epochs_and_distinct_splits(figures,
                                                                              tmp_path):
    """A 1-epoch run is more than two dots: its 50 step losses span the epoch, the axis is
    whole epochs from 0, train and test differ in colour and marker, and legends give the
    values."""
    out = plot.learning_curves(_trained_history(1, 50), tmp_path / "one.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_loss, ax_acc = figures[0].axes
    steps = _line(ax_loss, "train, per step")
    np.testing.assert_allclose(steps.get_xdata(), np.arange(1, 51) / 50)
    np.testing.assert_allclose(steps.get_ydata(), [2.0 / (1 + j) for j in range(50)])
    for ax in (ax_loss, ax_acc):
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [0.0, 1.0], ticks
        train = _line(ax, "train (epoch mean)" if ax is ax_loss else "train:")
        test = _line(ax, "test")
        assert train.get_color() != test.get_color()
        assert train.get_marker() != test.get_marker()
        assert train.get_linestyle() != test.get_linestyle()
    assert _line(ax_acc, "train").get_label() == "train: 0.81"
    assert _line(ax_acc, "test").get_label() == "test: 0.86"
    assert ax_acc.get_ylim()[1] >= 1.0 and ax_acc.get_ylim()[0] < 0.81


def test_several_runs_keep_one_colour_each_and_split_markers(figures, tmp_path):
    plot.learning_curves({"sgd": _trained_history(3, 5), "adam": _trained_history(3, 5)},
                         tmp_path / "runs.png")
    ax_loss, _ = figures[0].axes
    for run in ("sgd", "adam"):
        train, test = _line(ax_loss, f"{run} train ("), _line(ax_loss, f"{run} test")
        assert train.get_color() == test.get_color()
        assert train.get_marker() == "o" and test.get_marker() == "s"
        assert len(_line(ax_loss, f"{run} train, per step").get_xdata()) == 15
    assert _line(ax_loss, "sgd train (").get_color() != _line(ax_loss, "adam train (").get_color()
    lo, hi = ax_loss.get_xlim()
    assert [t for t in ax_loss.get_xticks() if lo <= t <= hi] == [0.0, 1.0, 2.0, 3.0]


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "xpnet\[plot\]"'):
        plot.learning_curves(_history(), tmp_path / "c.png")
