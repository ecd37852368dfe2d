"""Progress output: a tqdm bar per epoch on a terminal, plain periodic lines anywhere else (a
log file, a batch job, a notebook), and the one-line epoch summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .. import validate
from .callbacks import Callback

__all__ = ["Progress", "epoch_line"]


class Progress(Callback):
    """Show how training goes, only on the first rank of a data-parallel run.

    ``enabled`` (default True): a tqdm bar per epoch when ``stream`` (default stderr) is a
    terminal, otherwise a plain line at most every ``interval`` seconds (default 30), such as
    ``epoch   1  batch 240/600  loss 0.4321  1830 ex/s  40s``; when evaluation starts after at
    least ``interval`` seconds without a line, a line says so. ``bar`` forces the bar (True) or
    the lines (False). ``verbose``: one line per epoch with its record (:func:`epoch_line`).
    ``clock`` (default :func:`time.monotonic`) times the lines.

    The running loss is the one the Trainer reads every ``log_interval`` batches (a host sync);
    the bar closes after the epoch's last batch, before evaluation.
    """

    priority = 90

    def __init__(self, enabled: bool = True, verbose: bool = False, *, bar: bool | None = None,
                 interval: float = 30.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled, self.verbose = bool(enabled), bool(verbose)
        self.interval = validate.positive_float("Progress", "interval", interval)
        self._stream = stream
        self.bar = None if bar is None else bool(bar)
        self._use_bar = False
        self.clock = clock
        self._bar: Any = None
        self._root = True
        self._epoch = 0
        self._loss: float | None = None
        self._seen = 0
        self._start = self._last = 0.0

    @property
    def stream(self) -> TextIO:
        """Where output goes: the given stream, else the current ``sys.stderr``."""
        return self._stream if self._stream is not None else sys.stderr

    def _on(self) -> bool:
        return self.enabled and self._root

    def on_fit_start(self, trainer: Any) -> None:
        self._root = trainer.parallel.comm.is_root
        self._use_bar = self.stream.isatty() if self.bar is None else self.bar
        self._last = self.clock()

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._close()
        self._epoch, self._loss, self._seen = epoch, None, 0
        self._start = self.clock()
        if self._on() and self._use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.batches_per_epoch, leave=False, desc=f"epoch {epoch}",
                             unit="batch", file=self.stream)

    def on_batch_end(self, trainer: Any, batch: int, out: Any, loss: float | None) -> None:
        if loss is not None:
            self._loss = loss
        output = getattr(out, "output", None)
        self._seen += int(output.shape[0]) if output is not None else trainer.batch_size
        if self._bar is not None:
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self._bar.update(1)
            if batch == self._bar.total:
                self._close()
        elif self._on() and not self._use_bar:
            now = self.clock()  # one reading per batch
            if now - self._last < self.interval:
                return
            line = f"epoch {self._epoch:>3}  batch {batch}/{trainer.batches_per_epoch}"
            if self._loss is not None:
                line += f"  loss {self._loss:.4f}"
            seconds = now - self._start
            if seconds > 0:  # examples/s of this rank, whose share is what it trains on
                rate = self._seen / seconds
                line += f"  {rate:.0f} ex/s" if rate >= 10 else f"  {rate:.2g} ex/s"
            self._write(line + f"  {seconds:.0f}s", now)

    def on_evaluate_start(self, trainer: Any, examples: int) -> None:
        if self._on():
            now = self.clock()
            if now - self._last >= self.interval:
                self._write(f"epoch {self._epoch:>3}  evaluating on {examples} examples", now)

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        self._close()
        if self.verbose and self._root:
            self._write(epoch_line(record))

    def on_fit_end(self, trainer: Any) -> None:
        self._close()

    def _write(self, line: str, now: float | None = None) -> None:
        print(line, file=self.stream, flush=True)
        if now is not None:
            self._last = now

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __repr__(self) -> str:
        return (f"Progress(enabled={self.enabled}, verbose={self.verbose}, bar={self.bar}, "
                f"interval={self.interval:g})")


def epoch_line(r: dict[str, float]) -> str:
    """``epoch   1  loss 0.4866  train acc 0.8503  lr 0.00155  8.4s  test loss ...``."""
    line = f"epoch {r['epoch']:>3}  loss {r['loss']:.4f}"
    if "train_acc" in r:
        line += f"  train acc {r['train_acc']:.4f}"
    line += f"  lr {r['lr']:.4g}  {r['seconds']:.1f}s"
    if "test_loss" in r:
        line += f"  test loss {r['test_loss']:.4f}"
    if "test_acc" in r:
        line += f"  test acc {r['test_acc']:.4f}"
    return line
