"""Progress output: a callback showing a tqdm bar per epoch and the one-line epoch summary."""

from __future__ import annotations

import sys
from typing import Any

from .callbacks import Callback

__all__ = ["Progress", "epoch_line"]


class Progress(Callback):
    """A tqdm bar per epoch when ``enabled`` (default: when stderr is a terminal) and one line
    per epoch when ``verbose``; only on the first rank of a data-parallel run.

    The bar advances at every batch and shows the running loss the Trainer reads every
    ``log_interval`` batches; it closes after the epoch's last batch, before evaluation.
    """

    priority = 90

    def __init__(self, enabled: bool | None = None, verbose: bool = False):
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.verbose = bool(verbose)
        self._bar: Any = None
        self._root = True

    def on_fit_start(self, trainer: Any) -> None:
        self._root = trainer.parallel.comm.is_root

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._close()
        if self.enabled and self._root:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.batches_per_epoch, leave=False, desc=f"epoch {epoch}",
                             unit="batch", file=sys.stderr)

    def on_batch_end(self, trainer: Any, batch: int, out: Any, loss: float | None) -> None:
        if self._bar is None:
            return
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self._bar.update(1)
        if batch == self._bar.total:
            self._close()

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        self._close()
        if self.verbose and self._root:
            print(epoch_line(record), file=sys.stderr)

    def on_fit_end(self, trainer: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __repr__(self) -> str:
        return f"Progress(enabled={self.enabled}, verbose={self.verbose})"


def epoch_line(r: dict[str, float]) -> str:
    """``epoch   1  loss 0.4866  train acc 0.8503  lr 0.00155  8.4s  test loss ...``."""
    line = f"epoch {r['epoch']:>3}  loss {r['loss']:.4f}"
    if "train_acc" in r:
        line += f"  train acc {r['train_acc']:.4f}"
    line += f"  lr {r['lr']:.3g}  {r['seconds']:.1f}s"
    if "test_loss" in r:
        line += f"  test loss {r['test_loss']:.4f}"
    if "test_acc" in r:
        line += f"  test acc {r['test_acc']:.4f}"
    return line
