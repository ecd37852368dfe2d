"""Command line: python -m xpnet info | smoke | export.

``python -m xpnet info [--json]``, ``python -m xpnet smoke [--steps N]`` and
``python -m xpnet export WEIGHTS_OR_CHECKPOINT --onnx OUT``.

``info`` reports the xpnet and Python versions, every backend (available or why not), the devices
and the backend ``XPNET_BACKEND``/``XPNET_DEVICE`` select; it exits non-zero when that selection
fails. ``smoke`` trains a tiny MLP on synthetic data and exits 0 only when the loss went down; it
is the Docker images' default command. ``export`` rebuilds a textbook model from a weights file
or checkpoint (see :mod:`xpnet.io.textbook`) and writes ONNX and/or safetensors.

Errors are one line on stderr (``xpnet: error: ...``), never a traceback. Exit status: 0 success;
2 a usage error (bad option, unknown backend name, malformed device: ValueError/TypeError);
1 a run-time error (the backend cannot run here, e.g. no GPU or no CUDA headers: BackendError;
the smoke loss did not decrease).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "smoke"]


def _error(msg: str, status: int = 2) -> int:
    """Print a one-line error to stderr and return ``status`` (2 usage, 1 run time)."""
    one_line = " ".join(str(msg).split())
    print(f"xpnet: error: {one_line}", file=sys.stderr)
    return status


def _status_of(error_type: str) -> int:
    """2 for a usage error (ValueError/TypeError), 1 for a run-time one (BackendError)."""
    return 1 if error_type == "BackendError" else 2


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import collect_info, format_info

    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    sel = info["selection"]
    if "error" in sel:
        return _error(sel["error"], _status_of(sel["error_type"]))
    return 0


def smoke(steps: int = 50, backend: str | None = None, seed: int = 0,
          device: str | None = None) -> tuple[float, float]:
    """Train a small MLP on synthetic 3-class blobs and return (first loss, last loss).

    Parameters
    ----------
    steps : int
        Full-batch Adam steps.
    backend : str or None
        Backend name for :func:`xpnet.set_backend`; None reads ``XPNET_BACKEND``.
    seed : int
        Seed of the data and of the initial weights.
    device : str or None
        Device for :func:`xpnet.set_backend` ('cuda:1'); None reads ``XPNET_DEVICE``.

    Returns
    -------
    tuple of float
        The loss before the first update and after the last one.

    Raises
    ------
    xpnet.BackendError, ValueError, TypeError
        When the backend cannot be selected.
    """
    import xpnet

    b = xpnet.set_backend(backend, device)
    print(f"xpnet smoke: backend {b.name} {b.version}, device {b.device}", flush=True)
    rng = np.random.default_rng(seed)
    n, d, k = 384, 16, 3
    centers = rng.normal(0.0, 2.0, (k, d))
    y_host = rng.integers(0, k, n)
    x_host = centers[y_host] + rng.normal(0.0, 1.0, (n, d))
    x = xpnet.to_device(x_host, "float32")
    y = xpnet.to_device(y_host, "int64")
    gen = xpnet.Generator(seed)
    model = xpnet.Sequential(xpnet.Linear(d, 32, rng=gen), xpnet.ReLU(),
                             xpnet.Linear(32, k, rng=gen))
    lossfn = xpnet.SoftmaxCrossEntropy()
    opt = xpnet.Adam(model, lr=1e-2)

    def loss_value() -> float:
        return float(xpnet.to_numpy(lossfn(model(x), y)))

    first = loss_value()
    print(f"step 0: loss {first:.4f}", flush=True)
    for _ in range(steps):
        lossfn(model(x), y)
        model.backward(lossfn.backward())
        opt.step()
    last = loss_value()
    print(f"step {steps}: loss {last:.4f}", flush=True)
    return first, last


def _cmd_smoke(args: argparse.Namespace) -> int:
    import xpnet

    if args.steps < 1:
        return _error(f"--steps must be at least 1, got {args.steps}")
    t0 = time.perf_counter()
    try:
        first, last = smoke(args.steps, args.backend, device=args.device)
    except xpnet.BackendError as exc:
        return _error(str(exc), 1)
    except (ValueError, TypeError) as exc:
        return _error(str(exc), 2)
    except Exception as exc:  # a CUDA failure past selection: one line, with the fix if known
        from .backend import explain_cuda_error

        why = explain_cuda_error(exc)
        if why is None:
            raise
        return _error(why, 1)
    took = time.perf_counter() - t0
    if not last < first:
        print(f"xpnet smoke: FAILED, loss did not decrease ({first:.4f} -> {last:.4f})",
              file=sys.stderr)
        return 1
    print(f"xpnet smoke: OK, loss {first:.4f} -> {last:.4f} in {took:.2f} s")
    return 0


def _shape_arg(text: str) -> tuple[int, ...]:
    """'1,28,28' as (1, 28, 28); ValueError naming the flag otherwise."""
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be sizes separated by commas, such as 1,28,28; "
                         f"got {text!r}") from None


def _announced_shapes(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model arrays a checkpoint's metadata announces, as zero-strided stand-ins of their
    shape and dtype (no memory): what :func:`~xpnet.io.textbook.build_textbook` sizes from."""
    return {k[len("model/"):]: np.broadcast_to(np.zeros((), spec["dtype"]), spec["shape"])
            for k, spec in meta["arrays"].items() if k.startswith("model/")}


def _cmd_export(args: argparse.Namespace) -> int:
    from .io import export_onnx, load_weights, save_weights
    from .io.checkpoint import read_checkpoint_meta
    from .io.textbook import TEXTBOOK, build_textbook
    from .io.weights import is_checkpoint, read_weights

    if not (args.onnx or args.safetensors):
        return _error("nothing to write: give --onnx OUT.onnx and/or --safetensors OUT")
    try:
        overrides = json.loads(args.model_args) if args.model_args else {}
    except json.JSONDecodeError as exc:
        return _error(f"--model-args must be a JSON object such as '{{\"hidden_size\": 50}}' "
                      f"({exc}), got {args.model_args!r}")
    if not isinstance(overrides, dict):
        return _error(f"--model-args must be a JSON object, got {args.model_args!r}")
    try:
        source = Path(args.source)
        if is_checkpoint(source):  # sizes from the metadata alone; the arrays are read
            # once the model is built, within its budget (load_weights below)
            state = _announced_shapes(read_checkpoint_meta(source))
            meta: dict[str, str] = {}
        else:
            state, meta = read_weights(source)
        name = args.model or meta.get("model")
        if name is None:
            return _error(f"{args.source} does not name its model (a checkpoint holds only "
                          f"arrays): give --model, one of {', '.join(TEXTBOOK)}")
        model, input_shape = build_textbook(name, state, overrides)
        if args.input_shape:
            input_shape = _shape_arg(args.input_shape)
        load_weights(model, args.source)
        written = []
        if args.safetensors:
            written.append(save_weights(model, args.safetensors))
        if args.onnx:
            written.append(export_onnx(model, args.onnx, input_shape))
    except ImportError as exc:
        return _error(str(exc), 1)
    except (OSError, ValueError, TypeError) as exc:
        return _error(str(exc), 2)
    for path in written:
        print(f"xpnet export: {name} (input (batch, {', '.join(map(str, input_shape))})) -> "
              f"{path} ({path.stat().st_size} bytes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``xpnet`` argument parser with its ``info``, ``smoke`` and ``export`` sub-commands."""
    parser = argparse.ArgumentParser(prog="xpnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{info,smoke,export}")
    info = sub.add_parser("info", help="show versions, backends, devices and the selection")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)
    smk = sub.add_parser("smoke", help="train a tiny MLP; exit 0 if the loss decreases")
    smk.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    smk.add_argument("--backend", default=None,
                     help="numpy, cupy, torch, array_api_strict or auto "
                          "(default: XPNET_BACKEND, else auto)")
    smk.add_argument("--device", default=None,
                     help="device, e.g. cuda:1, cpu, device1 (default: XPNET_DEVICE)")
    smk.set_defaults(func=_cmd_smoke)
    exp = sub.add_parser("export", help="write a textbook model's weights as ONNX or "
                                        "safetensors")
    exp.add_argument("source", help="a weights file (.safetensors) or a checkpoint (.npz)")
    exp.add_argument("--onnx", default=None, help="ONNX file to write (needs xpnet[export])")
    exp.add_argument("--safetensors", default=None, help="safetensors weights file to write")
    exp.add_argument("--model", default=None,
                     help="TwoLayerNet, MultiLayerNet, SimpleConvNet or DeepConvNet (default: "
                          "the name a weights file records; sizes come from the weights)")
    exp.add_argument("--model-args", default=None,
                     help="JSON object of constructor arguments overriding the inferred ones")
    exp.add_argument("--input-shape", default=None,
                     help="one example's shape without the batch axis, e.g. 1,28,28")
    exp.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xpnet`` command line and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 2 on a usage error (an unknown backend name or a malformed device);
        1 on a run-time error (the backend cannot run here, or the smoke loss did not
        decrease). Bad options exit through argparse (SystemExit 2).
    """
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func  # the sub-command's handler
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
