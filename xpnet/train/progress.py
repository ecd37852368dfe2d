"""Progress output: a tqdm bar per epoch (only when enabled) and the one-line epoch summary."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Progress", "epoch_line"]


class Progress:
    """Shows a tqdm bar per epoch when ``enabled`` and prints the epoch line when ``verbose``.

    The Trainer calls :meth:`start` at the start of an epoch, :meth:`update` at each log
    interval with the running loss it already read, :meth:`close` at the end of the epoch and
    :meth:`epoch_done` with the epoch's record. A process that should stay quiet (say, every
    rank but the first) passes ``enabled=False, verbose=False``.
    """

    def __init__(self, enabled: bool | None = None, verbose: bool = False):
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.verbose = bool(verbose)
        self._bar: Any = None

    def start(self, batches: Iterable[Any], total: int | None, epoch: int) -> Iterator[Any]:
        """Wrap one epoch's batches (an iterator is passed on unchanged when disabled)."""
        it = iter(batches)
        if not self.enabled:
            self._bar = None
            return it
        from tqdm.auto import tqdm

        # an iterator, not the loader: tqdm.auto's async variant calls iter() on what it is
        # given in __init__ and again to loop, which would draw (and waste) a second shuffle
        self._bar = tqdm(it, total=total, leave=False, desc=f"epoch {epoch}", unit="batch",
                         file=sys.stderr)
        return iter(self._bar)

    def update(self, running_loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{running_loss:.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def epoch_done(self, record: dict[str, float]) -> None:
        if self.verbose:
            print(epoch_line(record), file=sys.stderr)


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
