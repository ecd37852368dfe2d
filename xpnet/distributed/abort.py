"""Ending a job cleanly: an exception on any rank ends every rank, and is shown once."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import traceback
from collections.abc import Iterator

from .communicator import CollectiveError, Communicator, world

__all__ = ["ABORT_GRACE_SECONDS", "abort_on_error", "report_and_abort"]

#: time for the launcher to forward the error before Abort: it forwards a rank's output
#: asynchronously, so an immediate Abort can tear the job down before the message is out
ABORT_GRACE_SECONDS = 1.0


@contextlib.contextmanager
def abort_on_error(comm: Communicator | None = None) -> Iterator[Communicator]:
    """Run a block so that an exception on any rank ends every rank (no hang).

    The failing rank prints its traceback (prefixed with its rank) and calls ``Abort(1)``, which
    ends the whole job non-zero; ranks waiting in a collective are killed, so the error is shown
    once (see :func:`report_and_abort` for errors all ranks raise together).
    ``SystemExit(0)`` and normal completion pass through.
    """
    c = comm or world()
    try:
        yield c
    except SystemExit as exc:
        if c.size == 1 or exc.code in (0, None):
            raise
        report_and_abort(c, exc)
    except BaseException as exc:
        if c.size == 1:
            raise
        report_and_abort(c, exc)


def report_and_abort(c: Communicator, exc: BaseException, text: str | None = None,
                     code: int | None = None) -> None:
    """Print the error once and end the job. Rank 0 reports at once; another rank first waits
    a moment, so that an error every rank hits at the same point (bad data, a mismatch) is
    shown by rank 0 alone, whose Abort ends the waiting ranks; a :class:`CollectiveError` is
    never printed by them. ``text`` replaces the traceback (a one-line message).

    The job's exit status is ``code``; by default 1, the code of a ``SystemExit``, or 130 for
    a ``KeyboardInterrupt`` (128 + SIGINT, as shells report Ctrl-C). An interrupt is shown
    by its line alone: the MPI library's abort notice is left out, and further SIGINT and
    SIGTERM (a second Ctrl-C, the launcher forwarding it to every rank) are ignored while the
    job ends, so that they cannot cut the report short with a traceback."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    if interrupted:
        _ignore_interrupts()
    if not c.is_root:
        time.sleep(5.0 if isinstance(exc, CollectiveError) else 2.0)
    if code is None:
        code = 128 + signal.SIGINT if interrupted else 1
    if isinstance(exc, SystemExit):  # sys.exit(n) / argparse: its message is already out
        code = exc.code if isinstance(exc.code, int) else 1
    elif c.is_root or not isinstance(exc, CollectiveError):
        if text is None:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"[rank {c.rank}/{c.size}] {text.rstrip()}\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)
    c.abort(code, quiet=interrupted)


def _ignore_interrupts() -> None:
    """SIGINT and SIGTERM ignored from now on (main thread only; elsewhere a no-op)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
