"""ONNX export by running the model's own forward on ndonnx arrays.

ndonnx is an Array API library whose arrays record an ONNX graph instead of computing. Every
xpnet layer takes its namespace from its input, so the model's ``forward`` (evaluation mode,
under :func:`xpnet.no_grad`) on an ndonnx argument, with the parameters as ndonnx constants,
*is* the export: no per-layer export code. ndonnx is neither NumPy, CuPy nor torch, so
:mod:`xpnet.ops` takes its standard-only fallbacks (shifted slices instead of strided views or
a library convolution).

Two routes give a dynamic batch axis:

``direct``
    One trace with the batch axis symbolic. ndonnx reports an unknown size as ``None`` in
    ``x.shape`` (as the standard allows); a layer that builds a shape from the batch size (a
    reshape to ``(n, ...)``, a zeros of ``(n, ...)``) cannot run on it.
``scan``
    Where the direct trace fails, the forward is traced for one example (batch of 1, every
    size known) and wrapped in an ONNX ``Scan`` over the batch axis (with the ``onnx`` helper
    API): the same graph runs once per example. Exact for inference (every layer treats
    examples independently in evaluation mode), slower than a batched graph.

The route taken is stored in the model's metadata (``xpnet.route``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..grad_mode import no_grad
from ..module import Module

__all__ = ["export_onnx"]

INSTALL = 'pip install "xpnet[export]" (ndonnx, onnx, onnxruntime)'


def _require() -> tuple[Any, Any]:
    try:
        import ndonnx
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the export extra: {INSTALL} ({exc})") from None
    return ndonnx, onnx


class _on_ndonnx:
    """Context manager: the model's parameters and buffers as ndonnx arguments (named by their
    state-dict keys) and evaluation mode inside; everything as it was afterwards (also after an
    error). Arguments, not constants: ndonnx would fold every operation on a constant by
    running it while tracing, which is slow; the values become initializers afterwards."""

    def __init__(self, model: Module, ndx: Any):
        self.model, self.ndx = model, ndx

    def __enter__(self) -> tuple[Module, dict[str, Any], dict[str, np.ndarray]]:
        m = self.model
        self.modes = {path: sub.training for path, sub in m.modules().items()}
        self.params = {k: p.data for k, p in m.parameters().items()}
        self.buffers = m.buffers()
        args, values = {}, {}
        for k, data in [*self.params.items(), *self.buffers.items()]:
            values[k] = np.asarray(to_numpy(data))
            args[k] = self.ndx.argument(shape=values[k].shape,
                                        dtype=getattr(self.ndx, str(values[k].dtype)))
        params = m.parameters()
        for k, arg in args.items():
            if k in params:
                params[k].data = arg
            else:
                owner, leaf = m._owner(k)
                setattr(owner, leaf, arg)
        m.eval()
        return m, args, values

    def __exit__(self, *exc: Any) -> None:
        m = self.model
        params = m.parameters()
        for k, data in self.params.items():
            params[k].data = data
        for k, v in self.buffers.items():
            owner, leaf = m._owner(k)
            setattr(owner, leaf, v)
        for path, sub in m.modules().items():
            sub.training = self.modes[path]


def _constant_folding() -> Any:
    """Fold ndonnx's own constants (indices, shapes) with onnx's reference evaluator: ndonnx
    selects onnxruntime, which builds one session per folded operation (several times slower
    for the hundreds of small index constants of a sliced convolution)."""
    import contextlib

    try:
        from spox._future import ValuePropBackend, value_prop_backend
    except ImportError:  # another spox: keep ndonnx's choice
        return contextlib.nullcontext()
    return value_prop_backend(ValuePropBackend.REFERENCE)


def _trace(model: Module, ndx: Any, shape: tuple[int | str, ...], dtype: Any,
           names: tuple[str, str], params: dict[str, Any], values: dict[str, np.ndarray]) -> Any:
    """The ONNX model of one forward on an argument of ``shape``, parameters as initializers."""
    from onnx import numpy_helper

    x = ndx.argument(shape=shape, dtype=dtype)
    with no_grad(), _constant_folding():
        y = model(x)
    proto = ndx.build({names[0]: x, **params}, {names[1]: y})
    graph_inputs = list(proto.graph.input)
    del proto.graph.input[:]
    proto.graph.input.extend(i for i in graph_inputs if i.name not in values)
    proto.graph.initializer.extend(numpy_helper.from_array(values[i.name], i.name)
                                   for i in graph_inputs if i.name in values)
    return proto


def _scan(onnx: Any, one: Any, input_shape: tuple[int, ...]) -> Any:
    """An ONNX model running the batch-of-one graph ``one`` on every example of a batch."""
    from onnx import TensorProto, helper

    g = one.graph
    elem = g.input[0].type.tensor_type.elem_type
    out_dims = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim][1:]
    axes = helper.make_tensor("xpnet_axes0", TensorProto.INT64, [1], [0])
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["xpnet_example", "xpnet_axes0"], ["xpnet_x"]),
         *g.node,
         helper.make_node("Squeeze", ["xpnet_y", "xpnet_axes0"], ["xpnet_example_out"])],
        "xpnet_example",
        [helper.make_tensor_value_info("xpnet_example", elem, list(input_shape))],
        [helper.make_tensor_value_info("xpnet_example_out", elem, out_dims)],
        initializer=[axes, *g.initializer], value_info=list(g.value_info))
    scan = helper.make_node("Scan", ["input"], ["output"], num_scan_inputs=1, body=body)
    graph = helper.make_graph(
        [scan], "xpnet",
        [helper.make_tensor_value_info("input", elem, ["batch", *input_shape])],
        [helper.make_tensor_value_info("output", elem, ["batch", *out_dims])])
    return helper.make_model(graph, opset_imports=list(one.opset_import),
                             ir_version=one.ir_version)


def export_onnx(model: Module, path: str | os.PathLike[str], input_shape: tuple[int, ...]) -> Path:
    """Write ``model`` as an ONNX file taking ``input`` (batch, *input_shape) and giving
    ``output``; the batch size is free. The model's dtype (of its first parameter) is the
    input's. The model itself is left as it was (parameters, buffers, training mode).
    Returns the path.

    Needs the ``export`` extra (ndonnx, onnx). Raises TypeError/ValueError for a wrong model
    or shape, before anything is traced.
    """
    if not isinstance(model, Module):
        raise TypeError(f"export_onnx: model must be an xpnet Module, got "
                        f"{type(model).__name__}")
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
            for d in input_shape):
        raise ValueError(f"export_onnx: input_shape must be one example's shape without the "
                         f"batch axis, a tuple of positive ints such as (784,) or (1, 28, 28); "
                         f"got {input_shape!r}")
    input_shape = tuple(int(d) for d in input_shape)
    ndx, onnx = _require()
    params = list(model.state_dict().values())
    dtype = getattr(ndx, str(params[0].dtype)) if params else ndx.float32
    with _on_ndonnx(model, ndx) as (m, args, values):
        try:
            proto, route = _trace(m, ndx, ("batch", *input_shape), dtype,
                                  ("input", "output"), args, values), "direct"
        except Exception:  # a layer needs the batch size: trace one example, then Scan
            one = _trace(m, ndx, (1, *input_shape), dtype, ("xpnet_x", "xpnet_y"), args,
                         values)
            proto, route = _scan(onnx, one, input_shape), "scan"
    onnx.helper.set_model_props(proto, {"xpnet.route": route,
                                        "xpnet.model": type(model).__name__})
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path
