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


def learning_curves(histories: Mapping[str, Any] | Any, path: str | Path,
                    title: str = "") -> Path:
    """Save loss and accuracy curves (train and, if present, test) per epoch as a PNG.

    ``histories`` is one History (or list of per-epoch dicts) or a mapping label -> History,
    for comparing runs (optimizers, initialisations) on the same axes.
    """
    plt = _pyplot()
    runs = histories if isinstance(histories, Mapping) else {"": histories}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, hist) in enumerate(runs.items()):
        recs = _records(hist)
        epochs = [r["epoch"] for r in recs]
        prefix = f"{label} " if label else ""
        # one colour per run (test dashed); markers only while they stay readable
        style = {"color": f"C{i % 10}", "marker": "o" if len(recs) <= 30 else None,
                 "markersize": 4}
        ax_loss.plot(epochs, [r["loss"] for r in recs], label=f"{prefix}train", **style)
        ax_acc.plot(epochs, [r["train_acc"] for r in recs], label=f"{prefix}train", **style)
        if recs and "test_acc" in recs[0]:
            ax_acc.plot(epochs, [r["test_acc"] for r in recs], linestyle="--",
                        label=f"{prefix}test", **style)
            ax_loss.plot(epochs, [r["test_loss"] for r in recs], linestyle="--",
                         label=f"{prefix}test", **style)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
