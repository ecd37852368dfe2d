"""Sphinx configuration of xpnet's API reference.

The reference pages are written here, at configuration time, from each documented module's
``__all__``, so that they follow the code: a name added to, moved within or removed from the
public API needs no edit under docs/. A name a subpackage shares with the top level is
documented once, as ``xpnet.<Name>``, and the subpackage's page points to it.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's xpnet, installed or not

import xpnet  # noqa: E402

project = "xpnet"
author = "xpnet developers"
release = version = xpnet.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = False  # docstrings are numpydoc or plain reST
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

# (module, one line about it), in the order of the reference
MODULES = [
    ("xpnet", "Layers, losses, optimizers, schedules, modules and backend selection: the names "
              "most programs need, importable from the top level."),
    ("xpnet.models", "Ready-made networks from the textbook."),
    ("xpnet.train", "The Trainer, its callbacks, metrics, history and the single training "
                    "step."),
    ("xpnet.precision", "Mixed precision: the autocast policy layers follow and dynamic loss "
                        "scaling."),
    ("xpnet.data", "Data sets (synthetic and MNIST) and the batch loader."),
    ("xpnet.io.checkpoint", "Training checkpoints: writing them atomically, and reading them as "
                            "untrusted input within a memory budget (or their metadata "
                            "alone)."),
    ("xpnet.backend", "Choosing the array library and device; moving arrays to and from it."),
    ("xpnet.validate", "The argument checks every public entry point uses, and their message "
                       "format."),
    ("xpnet.gradcheck", "Central-difference gradient checks, for tests and for your own "
                        "layers."),
]


def _directive(module: str, name: str, obj: object) -> str:
    target = f"{module}.{name}"
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return f".. autoexception:: {target}\n   :show-inheritance:\n"
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n   :members:\n   :show-inheritance:\n"
    if callable(obj):
        return f".. autofunction:: {target}\n"
    return f".. autodata:: {target}\n   :no-value:\n"


def _page(module: str, about: str) -> str:
    mod = importlib.import_module(module)
    names = [n for n in getattr(mod, "__all__", []) if not n.startswith("_")]
    title = f"``{module}``"
    lines = [title, "=" * len(title), "", f".. module:: {module}", "", about, ""]
    shared = [n for n in names if module != "xpnet" and getattr(xpnet, n, None) is getattr(mod, n)]
    if shared:
        lines += ["Also here, documented at the top level: "
                  + ", ".join(f":py:obj:`xpnet.{n}`" for n in shared) + ".", ""]
    lines += [_directive(module, n, getattr(mod, n)) for n in names if n not in shared]
    return "\n".join(lines)


def _write_reference() -> None:
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    for module, about in MODULES:
        text = _page(module, about)
        path = out / f"{module}.rst"
        if not path.exists() or path.read_text() != text:  # unchanged pages stay cached
            path.write_text(text)


_write_reference()


# Docstrings in modules being rewritten elsewhere whose reST breaks this build, mended here as
# they are rendered: {documented name: [(text, replacement)]}. Delete an entry once its
# docstring is fixed at the source; an entry that no longer matches changes nothing.
DOCSTRING_FIXES = {
    # "|x|" reads as a reST substitution reference
    "xpnet.Sigmoid": [("for large |x|", "for large ``|x|``")],
    # free paragraphs after the Parameters section need a section header of their own
    "xpnet.set_backend": [("An explicit name never falls back", "Notes\n-----\nAn explicit name "
                                                                "never falls back")],
}


def _mend(app: object, what: str, name: str, obj: object, options: object,
          lines: list[str]) -> None:
    fixes = DOCSTRING_FIXES.get(name)
    if fixes:
        text = "\n".join(lines)
        for old, new in fixes:
            text = text.replace(old, new)
        lines[:] = text.split("\n")


def setup(app: object) -> None:
    app.connect("autodoc-process-docstring", _mend, priority=400)  # before napoleon (500)
