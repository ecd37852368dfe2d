"""Rebuild a textbook model from saved weights alone (for ``python -m xpnet export``).

A checkpoint holds arrays and training state but not the model's class or constructor
arguments. The command line takes the class by name (``--model``, else the ``model`` entry a
weights file's metadata has) and reads the sizes from the weights' shapes:

==================  ==========================================================================
TwoLayerNet         input, hidden and output sizes from ``0.W`` and ``2.W``
MultiLayerNet       input, hidden and output sizes from every Linear ``W``; BatchNorm when
                    ``gamma`` entries exist (the activation is relu unless given)
SimpleConvNet       channels, filters and kernel from ``0.W``; a square image side from the
                    first Linear's input size; hidden and output sizes from the Linears
DeepConvNet         channels from ``0.W``, output size from the last ``W`` (28 x 28 images)
==================  ==========================================================================

Keyword arguments given explicitly (``--model-args '{"activation": "tanh"}'``) override these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import models
from ..module import Module

__all__ = ["TEXTBOOK", "build_textbook"]

TEXTBOOK = ("TwoLayerNet", "MultiLayerNet", "SimpleConvNet", "DeepConvNet")


def _order(key: str) -> tuple[Any, ...]:
    """Sort '10.W' after '2.W' (safetensors writers may sort names as strings)."""
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def _inferred(name: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
    ws = [state[k] for k in sorted(state, key=_order) if k.endswith(".W")]
    if not ws:
        raise ValueError(f"cannot rebuild {name}: the weights have no 'W' tensors in xpnet's "
                         "layout (a torch-layout file?); expected xpnet.save_weights output "
                         "or a checkpoint")
    if name == "TwoLayerNet":
        return {"input_size": ws[0].shape[0], "hidden_size": ws[0].shape[1],
                "output_size": ws[-1].shape[1]}
    if name == "MultiLayerNet":
        return {"input_size": ws[0].shape[0], "hidden_sizes": [w.shape[1] for w in ws[:-1]],
                "output_size": ws[-1].shape[1],
                "batchnorm": any(k.endswith(".gamma") for k in state)}
    filters, channels, k, _ = ws[0].shape
    if name == "DeepConvNet":
        return {"input_shape": (channels, 28, 28), "output_size": ws[-1].shape[1]}
    side = 2 * math.isqrt(ws[1].shape[0] // filters) + k - 1  # conv output side, pooled by 2
    return {"input_shape": (channels, side, side), "filters": filters, "kernel_size": k,
            "hidden_size": ws[1].shape[1], "output_size": ws[-1].shape[1]}


def build_textbook(name: str, state: dict[str, np.ndarray], overrides: dict[str, Any]
                   ) -> tuple[Module, tuple[int, ...]]:
    """The textbook model ``name`` sized to fit ``state`` (``overrides`` win), in the weights'
    dtype, and one example's input shape. Raises ValueError naming what is missing."""
    if name not in TEXTBOOK:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(TEXTBOOK)} "
                         "(export another Module with xpnet.io.export_onnx in Python)")
    try:
        inferred = _inferred(name, state)
    except (IndexError, ZeroDivisionError) as exc:  # a crafted shape
        shapes = {k: list(v.shape) for k, v in state.items()}
        raise ValueError(f"cannot rebuild {name} from weights of shapes {shapes} "
                         f"({exc})") from None
    kw = {**inferred, **overrides}
    dtypes = {str(v.dtype) for v in state.values()}
    if "dtype" not in kw and len(dtypes) == 1:
        kw["dtype"] = dtypes.pop()
    try:
        model = getattr(models, name)(**kw)
    except TypeError as exc:
        raise ValueError(f"cannot build {name} with {kw}: {exc}") from None
    if "input_shape" in kw:
        return model, tuple(kw["input_shape"])
    return model, (int(kw["input_size"]),)
