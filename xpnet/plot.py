"""Optional figures (the ``plot`` extra): learning curves and 2-D decision boundaries as PNG.

matplotlib is imported lazily with the non-interactive Agg backend; it is never needed for
training. It takes plain histories and a ``predict(points) -> class indices`` callable; points,
labels and predictions may be host (NumPy, lists) or device arrays of any backend, brought to the
host with :func:`xpnet.backend.as_host` (the one rule for data handed to xpnet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["decision_boundary", "decision_boundaries", "learning_curves"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib, which is not installed; install the "
                          'plot extra: pip install "xpnet[plot]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _host(a: Any, what: str) -> np.ndarray:
    from .backend import as_host  # lazily: plotting stays importable on its own

    return as_host(a, what)


def _records(history: Any) -> list[dict[str, float]]:
    return list(getattr(history, "records", history))


def _step_curve(history: Any) -> tuple[list[float], list[float]]:
    """Per-step losses at fractional epochs: step j of an epoch's k at ``epoch - 1 + j / k``.

    Empty for a plain list of per-epoch dicts (no ``steps``).
    """
    by_epoch: dict[Any, list[float]] = {}
    for s in getattr(history, "steps", ()):
        by_epoch.setdefault(s["epoch"], []).append(s["loss"])
    xs: list[float] = []
    ys: list[float] = []
    for epoch, losses in by_epoch.items():
        k = len(losses)
        xs += [epoch - 1 + (j + 1) / k for j in range(k)]
        ys += losses
    return xs, ys


# train and test differ in marker and line style always, and in colour for a single run (with
# several runs the colour tells the runs apart)
_SPLITS = {"train": {"marker": "o", "linestyle": "-"},
           "test": {"marker": "s", "linestyle": "--", "markerfacecolor": "white"}}


def learning_curves(histories: Mapping[str, Any] | Any, path: str | Path,
                    title: str = "") -> Path:
    """Save loss and accuracy curves as a PNG: per-step training losses (when the history has
    them) under per-epoch train and test points, on an axis of whole epochs.

    ``histories`` is one History (or list of per-epoch dicts) or a mapping label -> History,
    for comparing runs (optimizers, initialisations) on the same axes. Legends give each
    curve's last value, so a one-epoch run still reads at a glance.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    runs = histories if isinstance(histories, Mapping) else {"": histories}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    last_epoch: float = 1
    lowest = 1.0
    for i, (label, hist) in enumerate(runs.items()):
        recs = _records(hist)
        epochs = [r["epoch"] for r in recs]
        last_epoch = max([last_epoch, *epochs])
        prefix = f"{label} " if label else ""
        colour = {split: f"C{(i if len(runs) > 1 else j) % 10}"
                  for j, split in enumerate(_SPLITS)}
        step_x, step_y = _step_curve(hist)
        if step_x:
            ax_loss.plot(step_x, step_y, color=colour["train"], alpha=0.35, linewidth=0.8,
                         label=f"{prefix}train, per step")
        markers = len(recs) <= 30  # beyond that they only blot the line
        for split, loss_key, acc_key in (("train", "loss", "train_acc"),
                                         ("test", "test_loss", "test_acc")):
            if not recs or loss_key not in recs[0]:
                continue
            style = dict(_SPLITS[split], color=colour[split], markersize=6 if markers else 0)
            for ax, key in ((ax_loss, loss_key), (ax_acc, acc_key)):
                values = [r.get(key, float("nan")) for r in recs]
                mean = " (epoch mean)" if split == "train" and ax is ax_loss else ""
                ax.plot(epochs, values, label=f"{prefix}{split}{mean}: {values[-1]:.4g}",
                        **style)
                if ax is ax_acc:
                    lowest = min([lowest, *(v for v in values if v == v)])
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xlim(0, last_epoch + 0.05 * last_epoch)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # accuracy lives in [0, 1]: keep 1 in view and give a few points room (autoscaling puts
    # a one-epoch run's two points on the frame)
    ax_acc.set_ylim(max(0.0, lowest - 0.1 * (1 - lowest) - 0.01), 1.005)
    if ax_loss.get_ylim()[0] > 0:  # losses are non-negative: show them against zero
        ax_loss.set_ylim(bottom=0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_boundary(ax: Any, predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                   y: np.ndarray, title: str, resolution: int) -> None:
    pad = 0.5
    (x0, y0), (x1, y1) = x.min(axis=0) - pad, x.max(axis=0) + pad
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = np.c_[gx.ravel(), gy.ravel()].astype(np.float32)
    zz = _host(predict(grid), "predict(points)").reshape(gx.shape)
    ax.contourf(gx, gy, zz, alpha=0.3, cmap="Spectral")
    ax.scatter(x[:, 0], x[:, 1], c=y, s=12, cmap="Spectral", edgecolors="k", linewidths=0.3)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def decision_boundary(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                      y: np.ndarray, path: str | Path, title: str = "",
                      resolution: int = 200) -> Path:
    """Save the decision regions of ``predict`` over 2-D points ``x`` (labels ``y``)."""
    return decision_boundaries({title: predict}, x, y, path, resolution=resolution)


def decision_boundaries(predictors: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                        x: np.ndarray, y: np.ndarray, path: str | Path,
                        resolution: int = 200, columns: int = 4) -> Path:
    """Save a grid of decision-boundary panels, one per named predictor."""
    plt = _pyplot()
    n = len(predictors)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    flat: Sequence[Any] = axes.ravel()
    for ax, (title, predict) in zip(flat, predictors.items()):
        _draw_boundary(ax, predict, _host(x, "x"), _host(y, "y"), title, resolution)
    for ax in flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, plt, path)
