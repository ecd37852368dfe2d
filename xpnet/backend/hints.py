"""Install hints that fit how xpnet itself was installed.

From a checkout (``pip install -e .``, ``pip install .``, or a source tree on ``PYTHONPATH``)
the fix is ``pip install -e ".[cupy12]"`` run in that checkout; from a package index it is
``pip install "xpnet[cupy12]"``. pip records which in ``direct_url.json`` (PEP 610).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import NamedTuple

__all__ = ["Install", "cupy_cuda_major", "install_command", "installed_from"]

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../xpnet


class Install(NamedTuple):
    """How the running xpnet came here: ``kind`` is 'editable', 'checkout' or 'index'; ``path``
    the checkout for the first two."""

    kind: str
    path: Path | None


def _source_tree() -> Path | None:
    root = _PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def installed_from() -> Install:
    """Where the running xpnet comes from: its checkout (editable or not) or a package index.

    A distribution whose recorded directory is not the one this code runs from (a second
    checkout on ``PYTHONPATH``) counts as that second checkout.
    """
    try:
        dist = importlib.metadata.distribution("xpnet")
        text = dist.read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        dist, text = None, None
    if text:
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        url = str(info.get("url", ""))
        if url.startswith("file://"):
            path = Path(url[len("file://"):]).resolve()
            if path == _PACKAGE_DIR.parent:
                editable = bool(info.get("dir_info", {}).get("editable"))
                return Install("editable" if editable else "checkout", path)
    tree = _source_tree()
    if tree is not None:  # running from a source tree (installed from it, or on PYTHONPATH)
        return Install("editable", tree)
    return Install("index", None)


def install_command(extra: str, install: Install | None = None) -> str:
    """The pip command that adds xpnet's optional dependencies ``extra`` ('cupy12', 'mpi')."""
    install = install or installed_from()
    if install.kind == "index":
        return f'pip install "xpnet[{extra}]"'
    flag = "-e " if install.kind == "editable" else ""
    return f'pip install {flag}".[{extra}]" in the checkout {install.path}'


def cupy_cuda_major() -> int | None:
    """12 or 13: the CUDA major version of the installed CuPy wheel, None when unknown."""
    for major in (12, 13):
        try:
            importlib.metadata.distribution(f"cupy-cuda{major}x")
            return major
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import cupy

        return int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:  # not installed, or no CUDA runtime to ask
        return None
