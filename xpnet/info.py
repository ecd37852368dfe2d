"""Environment report behind ``python -m xpnet info``: backends, devices and the selection.

:func:`collect_info` gathers everything into a JSON-serialisable dict and :func:`format_info`
renders it as the plain-text table the CLI prints. Neither changes the selected backend nor
CuPy's current device (a multi-GPU selection of ``cuda:1`` stays on device 1).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from . import __version__
from . import backend as _backend
from .backend.hints import installed_from
from .backend.probe import cuda_devices, strict_devices, torch_devices

__all__ = ["collect_info", "conv_advice", "format_info"]


def _selection() -> dict[str, Any]:
    """Resolve ``XPNET_BACKEND``/``XPNET_DEVICE`` as :func:`xpnet.set_backend` would.

    Nothing is selected (:func:`xpnet.backend.resolve_backend`): neither xpnet's backend nor
    CuPy's current device changes. The result holds ``backend`` and ``device`` on success, else
    ``error`` (the message) and ``error_type`` (``BackendError``: cannot run here;
    ``ValueError``/``TypeError``: a bad name or device).
    """
    try:
        b = _backend.resolve_backend()
        return {"backend": b.name, "device": str(b.device), "version": b.version}
    except (_backend.BackendError, ValueError, TypeError) as exc:
        return {"error": str(exc), "error_type": type(exc).__name__}


def collect_info() -> dict[str, Any]:
    """Everything ``xpnet info`` reports, as a JSON-serialisable dict.

    Returns
    -------
    dict
        Keys ``xpnet``, ``python``, ``platform``, ``installed_from`` (``kind``: 'editable',
        'checkout' or 'index'; ``path``), ``backends`` (name -> ``available``,
        ``version`` or ``reason``), ``devices`` (``cupy``, ``torch_cuda``,
        ``array_api_strict``), ``auto`` (``choice``, ``reason``), ``conv_nets`` (the
        backend for conv nets on the CPU, see :func:`conv_advice`), ``env``, ``selection``.
    """
    backends = {}
    for name, text in _backend.available_backends().items():
        if text.startswith("unavailable: "):
            backends[name] = {"available": False, "reason": text[len("unavailable: "):]}
        else:
            backends[name] = {"available": True, "version": text}
    ok, why = _backend.cuda_status()
    install = installed_from()
    return {
        "xpnet": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "installed_from": {"kind": install.kind,
                           "path": str(install.path) if install.path else None},
        "backends": backends,
        "devices": {
            "cupy": cuda_devices(),
            "torch_cuda": torch_devices(),
            "array_api_strict": strict_devices(),
        },
        "auto": {"choice": "cupy" if ok else "numpy", "reason": why},
        "conv_nets": conv_advice(backends),
        "env": {k: os.environ.get(k) for k in ("XPNET_BACKEND", "XPNET_DEVICE")},
        "selection": _selection(),
    }


def conv_advice(backends: dict[str, Any]) -> str:
    """Which backend to use for conv nets on the CPU: torch's own convolutions when torch is
    installed, else NumPy's grid formulation (the transparent reference path)."""
    if backends.get("torch", {}).get("available"):
        return ("the torch backend runs torch's own convolutions (fastest CPU path here); "
                "select it with XPNET_BACKEND=torch")
    return ("NumPy's grid convolution (install torch for torch's own convolutions, the "
            "fastest CPU path)")


def _gpu_line(d: dict[str, Any], prefix: str) -> str:
    return (f"    {prefix}{d['index']}: {d['name']}, {d['total_memory_gib']} GiB, "
            f"compute capability {d['compute_capability']}")


def _install_line(install: dict[str, Any]) -> str:
    if install["kind"] == "index":
        return "from a package index"
    how = " (editable)" if install["kind"] == "editable" else ""
    return f"from the checkout {install['path']}{how}"


def format_info(info: dict[str, Any]) -> str:
    """Render :func:`collect_info`'s dict as the text ``xpnet info`` prints.

    Parameters
    ----------
    info : dict
        The result of :func:`collect_info`.

    Returns
    -------
    str
        A multi-line report (no trailing newline).
    """
    lines = [f"xpnet {info['xpnet']}",
             f"Python {info['python']} ({info['executable']})",
             f"Platform {info['platform']}",
             f"Installed {_install_line(info['installed_from'])}", "", "Backends:"]
    width = max(len(n) for n in info["backends"])
    for name, b in info["backends"].items():
        state = f"yes  {b['version']}" if b["available"] else f"no   {b['reason']}"
        lines.append(f"  {name:<{width}}  {state}")
    devs = info["devices"]
    lines += ["", "Devices:"]
    lines += ["  CuPy CUDA:"] + ([_gpu_line(d, "cuda:") for d in devs["cupy"]] or ["    none"])
    lines += ["  torch CUDA:"] + ([_gpu_line(d, "cuda:") for d in devs["torch_cuda"]]
                                  or ["    none"])
    lines.append("  array_api_strict: " + (", ".join(devs["array_api_strict"]) or "none"))
    lines += ["", f"auto -> {info['auto']['choice']} ({info['auto']['reason']})",
              f"conv nets: {info['conv_nets']}", "", "Environment:"]
    lines += [f"  {k}={v}" if v is not None else f"  {k} (unset)" for k, v in info["env"].items()]
    sel = info["selection"]
    lines.append("")
    if "error" in sel:
        lines.append(f"Selected: none ({sel['error_type']}; the reason follows on stderr)")
    else:
        lines.append(f"Selected: {sel['backend']} {sel['version']} on {sel['device']}")
    return "\n".join(lines)
