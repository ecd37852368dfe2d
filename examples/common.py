"""Flags and output shared by the example scripts, kept out of them so each reads as a tutorial.

Not part of xpnet, and no recipe: the model, optimizer, schedule, Trainer set-up and training
call, and the flags that shape them, live in each script (``train()``, ``evaluate()``,
``main()``, as in pytorch/examples). This holds the flags every example has and their argparse
types (built on :mod:`xpnet.validate`), what those flags do before training starts (``--backend``,
``--data-dir`` / ``--train-limit`` / ``--dry-run``, ``--plot``, ``--checkpoint`` / ``--resume``),
the clean one-line exit for expected errors, and the output: progress lines, a stopwatch, a text
table, ``--json``.

Convention: progress and tables are human output and go to stderr while ``--json`` is on, so the
last line on stdout is exactly one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import xpnet
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import xpnet
from xpnet import distributed, validate
from xpnet.backend import is_out_of_memory
from xpnet.data import load_mnist as _load_mnist
from xpnet.io.checkpoint import read_checkpoint_meta
from xpnet.precision import POLICIES
from xpnet.train import TrainingDiverged

# What a user can cause and fix without reading a traceback: a backend that cannot run here
# (BackendError), a bad backend name, argument, data file or checkpoint (ValueError, which
# covers xpnet.data.DataError and CheckpointError), a missing file or failed download (OSError)
# and a diverged run (TrainingDiverged).
# a RankRefused names another rank's expected error (bad input on that rank alone)
EXPECTED_ERRORS = (xpnet.BackendError, ValueError, OSError, TrainingDiverged,
                   distributed.RankRefused)

DRY_RUN_IMAGES = 200  # MNIST train and test images used by --dry-run


def prog(file: str) -> str:
    """The name errors are reported under: 'examples/<script>.py'."""
    return f"examples/{Path(file).name}"


EXIT_USAGE = 2  # usage errors; expected run-time errors exit 1 (README, "Errors and exit codes")

# what matplotlib writes (Figure.savefig's formats, the raw ones left out)
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp",
                "pgf")


# ---------------------------------------------------------------------------- flag types
def _flag_type(check: Callable[[str, str, Any], Any], parse: Callable[[str], Any],
               expected: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses the text, then lets the ``xpnet.validate`` function
    ``check`` decide; a refusal reads ``argument --flag: expected <expected>, got <text>``."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            return check("argument", "value", value)
        except ValueError:  # validate's ArgumentTypeError is a ValueError too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}") from None

    convert.__name__ = check.__name__
    return convert


positive_int = _flag_type(validate.positive_int, int, "a positive integer")
non_negative_int = _flag_type(validate.non_negative_int, int, "an integer >= 0")
non_negative_float = _flag_type(validate.non_negative_float, float, "a finite number >= 0")
fraction = _flag_type(validate.probability, float, "a fraction in [0, 1)")


# ---------------------------------------------------------------------------- parser and flags
class Parser(argparse.ArgumentParser):
    """argparse with the examples' conventions: a usage error is one line on stderr,
    ``examples/<name>.py: error: <message> (see --help)``, exit 2; after parsing, the output
    and input paths are checked (before any training) and ``args.explicit`` holds the
    destinations of the flags given on the command line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        parsed = super().parse_args(argv, namespace)
        parsed.explicit = self._explicit(argv)
        if getattr(parsed, "batch_size", None):
            _RUN["batch_size"] = str(parsed.batch_size)  # named if the run runs out of memory
        if getattr(parsed, "plot", None):
            parsed.plot = str(check_plot_path(self, parsed.plot))
        data_dir = getattr(parsed, "data_dir", None)
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            what = "is not a folder" if Path(data_dir).exists() else "does not exist"
            self.error(f"--data-dir: {data_dir} {what}; expected the folder holding the MNIST "
                       ".gz files or a mnist/ folder with them")
        return parsed

    def _explicit(self, argv: Sequence[str]) -> set[str]:
        given = set()
        for token in argv:
            if token == "--":
                break
            if token.startswith("-"):
                action = self._option_string_actions.get(token.split("=", 1)[0])
                if action is not None:
                    given.add(action.dest)
        return given


def check_plot_path(parser: argparse.ArgumentParser, plot: str) -> Path:
    """The file ``--plot`` will write, checked before training: a supported extension (none:
    .png is added), a folder means ``<folder>/<example>.png``, and the nearest existing parent
    must be a writable folder. Usage error (exit 2) otherwise."""
    path = Path(plot).expanduser()
    if path.is_dir():
        path = path / (Path(parser.prog).stem + ".png")
    elif not path.suffix:
        path = path.with_name(path.name + ".png")
    fmt = path.suffix[1:].lower()
    if fmt not in PLOT_FORMATS:
        parser.error(f"--plot: {plot} has the extension .{fmt}, which cannot be written; "
                     f"expected one of {', '.join('.' + f for f in PLOT_FORMATS)}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"--plot: cannot write {path}: {parent} is not a writable folder")
    return path


def plain(text: str) -> str:
    """Text without reST markup, for --help: ``x`` and :func:`x` become x."""
    text = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text)
    return re.sub(r"`{1,2}([^`]*)`{1,2}", r"\1", text)


def make_parser(file: str, doc: str, *, epochs: int, lr: float | None, batch_size: int = 100,
                full_batch: bool = False, seed: int = 0, mnist: bool = True,
                train_limit: int | None = None,
                epochs_help: str = "number of epochs to train",
                batch_help: str = "input batch size for training",
                lr_help: str = "learning rate", lr_shown: str | None = None
                ) -> argparse.ArgumentParser:
    """An argument parser with the flags every example has, each help ending "(default: N)".

    ``mnist`` adds ``--data-dir`` and ``--train-limit``; the synthetic examples (spiral, moons)
    make their own data and leave those out. ``full_batch`` lets ``--batch-size`` be 0.
    ``lr_shown`` replaces the default in the help text when it is not a single number.
    """
    parser = Parser(prog=prog(file), description=plain(doc.split("\n\n")[0]),
                                     epilog=f"What it reproduces and the results to expect: "
                                            f"the docstring at the top of {prog(file)}.")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help="numpy, torch, array_api_strict, cupy or auto; overrides "
                             "XPNET_BACKEND (default: XPNET_BACKEND, else auto)")
    parser.add_argument("--epochs", type=positive_int, default=epochs, metavar="N",
                        help=f"{epochs_help} (default: {epochs})")
    parser.add_argument("--batch-size", type=non_negative_int if full_batch else positive_int,
                        default=batch_size, metavar="N",
                        help=f"{batch_help} (default: {batch_size})")
    parser.add_argument("--lr", type=non_negative_float, default=lr, metavar="LR",
                        help=f"{lr_help} (default: {lr_shown or lr})")
    parser.add_argument("--seed", type=non_negative_int, default=seed, metavar="S",
                        help=f"random seed of data, weights and batch order (default: {seed})")
    if mnist:
        parser.add_argument("--data-dir", default=None, metavar="DIR",
                            help="folder holding the four MNIST .gz files or a mnist/ folder "
                                 "with them; downloads into ~/.cache/xpnet when no folder has "
                                 "them (default: $XPNET_DATA_DIR, then ~/.cache/xpnet)")
        shown = "all 60000" if train_limit is None else train_limit
        parser.add_argument("--train-limit", type=positive_int, default=train_limit, metavar="N",
                            help=f"use only the first N training images (default: {shown})")
    parser.add_argument("--precision", choices=POLICIES, default="float32",
                        help="mixed16: Linear/Conv2d in float16 with loss scaling; bf16: in "
                             "bfloat16 (torch); parameters, optimizer, loss and normalisation "
                             "stay float32 (default: float32)")
    parser.add_argument("--dry-run", action="store_true",
                        help="a few steps on tiny data, to check that the script runs "
                             "(default: False)")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="save the figure to PATH, checked before training: .png, "
                             ".pdf, .svg...; a folder gets <example>.png inside (default: no "
                             "figure)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary as the last line of stdout; human output "
                             "goes to stderr (default: False)")
    if not distributed.world().is_root:  # under mpiexec, rank 0 alone shows usage and errors
        parser.print_usage = parser.print_help = lambda file=None: None
        parser.exit = lambda status=0, message=None: sys.exit(status)
    return parser


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--resume``, ``--overwrite`` and ``--stop-after`` (the MNIST scripts);
    ``check_resume`` checks them together after parsing."""
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="save a checkpoint to PATH after every epoch (default: none)")
    parser.add_argument("--resume", action="store_true",
                        help="load --checkpoint PATH first and continue to --epochs in total; "
                             "every setting must match the saved run's, except --lr, which "
                             "replaces the saved rate when given (default: False)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even though --checkpoint PATH exists, replacing it "
                             "after the first epoch (default: False: refused)")
    parser.add_argument("--stop-after", type=positive_int, default=None, metavar="N",
                        help="stop after N epochs in this run, the schedule still planned for "
                             "--epochs; --resume finishes the run later exactly as if it had "
                             "not stopped (default: run to --epochs)")


def refuse_precision(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """For an example whose training loop is written out by hand: only float32 (mixed
    precision comes with the Trainer, which casts and scales the loss)."""
    if args.precision != "float32":
        parser.error(f"--precision {args.precision}: this example writes its training loop "
                     "out by hand, in float32; mixed precision runs through the Trainer "
                     "(mnist_cnn.py, mnist_mlp.py, ...)")


def check_resume(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--checkpoint / --resume / --overwrite make sense together (usage errors, exit 2):
    --resume needs an existing --checkpoint file; an existing one without --resume needs
    --overwrite, so an earlier run's work is never replaced by accident."""
    if args.resume and not args.checkpoint:
        parser.error("--resume needs --checkpoint PATH")
    if args.overwrite and not args.checkpoint:
        parser.error("--overwrite needs --checkpoint PATH")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other: continue the saved run, "
                     "or replace it")
    _RUN["checkpoint"] = args.checkpoint  # named by the line an interrupt prints
    if not args.checkpoint:
        return
    path = Path(args.checkpoint)
    if path.is_dir():
        parser.error(f"--checkpoint: {path} is a folder; expected a file path such as "
                     f"{path / 'run.npz'}")
    if args.resume and not path.exists():
        parser.error(f"--resume: the checkpoint {path} does not exist; run without --resume "
                     "to start one")
    if path.exists() and not args.resume and not args.overwrite:
        parser.error(f"--checkpoint: {path} already exists (an earlier run's); pass --resume "
                     "to continue it or --overwrite to start afresh and replace it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"--checkpoint: cannot write {path}: {parent} is not a writable folder")


def use_saved_lr(args: argparse.Namespace) -> dict[str, float] | None:
    """The learning rate on --resume: without --lr the saved run's rate (``args.lr`` is set
    to it), with --lr the new rate, returned as ``Trainer.resume``'s ``override``.

    Every other setting must match the saved run's (a mismatch is named, exit 1); ``args.lr``
    and the JSON summary hold the rate actually used.
    """
    if not args.resume:
        return None
    if "lr" in getattr(args, "explicit", {"lr"}):
        return {"lr": args.lr}
    saved = read_checkpoint_meta(args.checkpoint).get("base_lr")  # no array is read
    if saved is not None:
        args.lr = saved
    return None


# ---------------------------------------------------------------------------- running
# the run's --checkpoint PATH, once parsed (check_resume): what an interrupted run names
_RUN: dict[str, str | None] = {"checkpoint": None, "batch_size": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it stops as Ctrl-C does (the Trainer rolls
    back the unfinished epoch, the checkpoint keeps the last finished one)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def out_of_memory_line(name: str, exc: BaseException) -> str:
    """The one line a run that ran out of memory prints: the batch size to lower."""
    size = _RUN["batch_size"]
    hint = (f"lower --batch-size (now {size}; try {max(1, int(size) // 2)})" if size
            else "lower --batch-size")
    return f"{name}: error: out of memory ({type(exc).__name__}); {hint}"


def interrupted_line(name: str, exc: KeyboardInterrupt) -> tuple[str, int]:
    """The one line an interrupted run prints, and its exit code: 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM), as shells report a process a signal ended."""
    sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    path = _RUN["checkpoint"]
    if path is None:
        kept = ("nothing was saved (pass --checkpoint PATH to save after every epoch, then "
                "--checkpoint PATH --resume to continue)")
    elif Path(path).exists():
        kept = (f"{path} holds the last finished epoch; continue with --checkpoint {path} "
                "--resume")
    else:
        kept = f"no epoch had finished, nothing was saved to {path}; run again to start over"
    return f"{name}: interrupted by {sig.name}; {kept}", 128 + int(sig)


def cli(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate an example's ``main``: an expected error becomes one line on stderr, exit 1.

    The line reads ``examples/<name>.py: error: <message>``, like argparse's usage errors.
    Ctrl-C (SIGINT) or SIGTERM prints one line saying what was saved and how to resume, and
    exits 130 or 143. Under an MPI launcher (several ranks) any error ends every rank: the line
    (or, for an unexpected error, the traceback) is shown once and the job exits non-zero.
    """
    name = prog(inspect.getfile(main))

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        comm = distributed.world()  # one process unless an MPI launcher started several
        _RUN["checkpoint"] = _RUN["batch_size"] = None
        try:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread: SIGTERM keeps its handler
            previous = None
        try:
            with distributed.abort_on_error(comm):
                try:
                    return main(argv)
                except EXPECTED_ERRORS as exc:
                    message = str(exc).replace("\n", " ") or type(exc).__name__
                    if comm.size > 1:
                        distributed.report_and_abort(comm, exc, f"{name}: error: {message}")
                    print(f"{name}: error: {message}", file=sys.stderr)
                    return 1
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    line = out_of_memory_line(name, exc)
                    if comm.size > 1:
                        distributed.report_and_abort(comm, exc, line)
                    print(line, file=sys.stderr)
                    return 1
                except KeyboardInterrupt as exc:
                    line, code = interrupted_line(name, exc)
                    if comm.size > 1:  # the job ends with 130 or 143 as well
                        distributed.report_and_abort(comm, exc, line, code)
                    print(line, file=sys.stderr)
                    return code
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def set_backend(name: str | None) -> xpnet.Backend:
    """``xpnet.set_backend(name)``; on several ranks with a GPU backend and no
    ``XPNET_DEVICE``, each rank takes GPU ``local_rank`` of its node."""
    backend = xpnet.set_backend(name)
    comm = distributed.world()
    if comm.size > 1 and "cuda" in str(backend.device).lower() \
            and not os.environ.get("XPNET_DEVICE"):
        backend = xpnet.set_backend(backend.name, distributed.device_for_local_rank(comm))
    if comm.size > 1:
        threads = getattr(comm, "threads", None)
        log(f"data parallel: {comm.size} ranks (MPI), global batch split across them"
            + (f", {threads} thread(s) per rank" if threads else ""))
    return backend


def load_mnist(args: argparse.Namespace, *, flatten: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as host arrays, honouring ``--data-dir``, ``--train-limit`` and ``--dry-run``
    (which keeps 200 training and 200 test images)."""
    limit = args.train_limit
    if args.dry_run:
        limit = min(limit or DRY_RUN_IMAGES, DRY_RUN_IMAGES)
    x_train, y_train, x_test, y_test = _load_mnist(args.data_dir, flatten=flatten,
                                                   train_limit=limit, data_dir_name="--data-dir")
    if args.dry_run:
        x_test, y_test = x_test[:DRY_RUN_IMAGES], y_test[:DRY_RUN_IMAGES]
    log(f"MNIST: {len(x_train)} training and {len(x_test)} test images")
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------- output
def log(*parts: Any) -> None:
    """Progress: always to stderr, so stdout stays clean for ``--json``; rank 0 only."""
    if distributed.world().is_root:
        print(*parts, file=sys.stderr, flush=True)


def show(args: argparse.Namespace, text: str) -> None:
    """Final human-readable results: stdout normally, stderr when ``--json`` is on; rank 0
    only."""
    if distributed.world().is_root:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _plain(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars to Python numbers, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(summary: dict[str, Any]) -> None:
    """Print ``summary`` as one line of strict JSON on stdout."""
    print(json.dumps(_plain(summary), allow_nan=False), flush=True)


def backend_fields(backend: xpnet.Backend) -> dict[str, str]:
    """The JSON fields every example reports about where it ran."""
    return {"backend": backend.name, "backend_version": backend.version,
            "device": str(backend.device)}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | dict[str, str]) -> str:
    """A plain-text table of ``rows`` (dicts); ``columns`` lists keys, or maps key -> header.

    Numbers are right-aligned (floats with 4 decimals, or 3 significant digits below 0.01).
    """
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if 0 < abs(v) < 0.01 else f"{v:.4f}"
        return str(v)

    headers = columns if isinstance(columns, dict) else {c: c for c in columns}
    keys = list(headers)
    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(headers[k]), *(len(row[i]) for row in cells)) for i, k in enumerate(keys)]
    numeric = [all(isinstance(r[k], (int, float)) for r in rows) for k in keys]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(headers.values())), line(["-" * w for w in widths]),
                      *map(line, cells)])


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall-clock, perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.start, self.seconds = time.perf_counter(), 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def report_mnist_run(args: argparse.Namespace, backend: xpnet.Backend, history: Any,
                     data: tuple, test: tuple[float, float], *, example: str, model: str,
                     label: str, resumed_at: int) -> None:
    """The shared ending of mnist_mlp.py and mnist_cnn.py: summary line, plot, JSON.

    Timings cover the training loop only (the Trainer's per-epoch seconds: no data loading, no
    evaluation), so ``images_per_second`` is comparable with benchmarks/run.py.
    """
    x_train, _, x_test, _ = data
    test_loss, test_accuracy = test
    train_seconds = sum(history["seconds"])
    images_per_second = len(x_train) * len(history) / train_seconds if train_seconds else 0.0
    last = history.last
    show(args, f"{label} on {backend.name}: test accuracy {test_accuracy:.4f}, test loss "
               f"{test_loss:.4f} after {len(history)} epoch(s); training {train_seconds:.1f} s, "
               f"{images_per_second:,.0f} images/s")
    comm = distributed.world()
    if not comm.is_root:  # rank 0 alone plots and prints the summary
        return
    if args.json:  # first: a failing figure must not lose the summary
        print_json({
            "example": example, **backend_fields(backend), "model": model,
            "epochs": len(history), "batch_size": args.batch_size, "lr": args.lr,
            "world_size": comm.size, "global_batch_size": args.batch_size,
            "schedule": args.schedule, "warmup": args.warmup, "weight_decay": args.weight_decay,
            "accumulate": args.accumulate,
            "train_images": len(x_train), "test_images": len(x_test),
            "test_accuracy": test_accuracy, "test_loss": test_loss,
            "train_loss": last["loss"], "train_accuracy": last["train_acc"],
            "train_seconds": train_seconds, "images_per_second": images_per_second,
            "resumed_from_epoch": resumed_at, "history": history.records})
    if args.plot:
        from xpnet.plot import learning_curves
        saved = learning_curves(history, args.plot, title=f"{label}, MNIST")
        log(f"saved {saved}")
