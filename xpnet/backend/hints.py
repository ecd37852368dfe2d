"""Install hints that fit how xpnet itself was installed.

Running from a checkout (``pip install -e .``, or a source tree on ``PYTHONPATH``) the fix is
``pip install -e ".[cupy12]"`` run in that checkout; installed by ``pip install .`` from one, it
is ``pip install ".[cupy12]"`` there; from a package index, ``pip install "xpnet[cupy12]"``.
pip records where a package came from in ``direct_url.json`` (PEP 610).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import NamedTuple

__all__ = ["Install", "cupy_cuda_major", "install_command", "installed_from"]

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../xpnet


class Install(NamedTuple):
    """How the running xpnet came here: ``kind`` is 'editable' (a checkout xpnet runs from),
    'checkout' (copied from a checkout by ``pip install .``), 'archive' (a wheel or sdist
    file) or 'index'; ``path`` is the checkout or the file."""

    kind: str
    path: Path | None


def _source_tree() -> Path | None:
    root = _PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def installed_from() -> Install:
    """Where the running xpnet comes from: the checkout it runs from, the checkout or file pip
    installed it from (PEP 610's ``direct_url.json``), or a package index."""
    tree = _source_tree()
    if tree is not None:  # running from a checkout: editable, or on PYTHONPATH
        return Install("editable", tree)
    try:
        text = importlib.metadata.distribution("xpnet").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        text = None
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    url = str(info.get("url", ""))
    if url.startswith("file://"):
        path = Path(url[len("file://"):])
        return Install("archive" if "archive_info" in info else "checkout", path)
    return Install("index", None)


def install_command(extra: str, install: Install | None = None) -> str:
    """The pip command that adds xpnet's optional dependencies ``extra`` ('cupy12', 'mpi')."""
    install = install or installed_from()
    if install.kind == "editable":
        return f'pip install -e ".[{extra}]" in the checkout {install.path}'
    if install.kind == "checkout":
        return f'pip install ".[{extra}]" in the checkout {install.path}'
    if install.kind == "archive":
        return f'pip install "{install.path}[{extra}]"'
    return f'pip install "xpnet[{extra}]"'


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
