"""The package's layout rules, read from the sources: only ``xpnet/backend/`` and
``xpnet/ops.py`` import a concrete array library (torch, cupy), and only ``xpnet/distributed/``
imports a communication library (mpi4py, NCCL). The one crossing is NCCL's Python binding,
which CuPy ships as ``cupy.cuda.nccl``: it is imported in ``xpnet/distributed/nccl.py`` alone."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xpnet"
ARRAY_LIBRARIES = ("torch", "cupy")
COMMUNICATION = ("mpi4py",)
NCCL_BINDING = "cupy.cuda.nccl"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import statement and import_module("...") call."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
            found.append((node.lineno, node.args[0].value))
    return found


def _names(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def _scan() -> dict[str, list[tuple[int, str]]]:
    return {str(p.relative_to(PACKAGE.parent)): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_only_backend_and_ops_import_an_array_library():
    wrong = []
    for name, imports in _scan().items():
        allowed = name.startswith("xpnet/backend/") or name == "xpnet/ops.py"
        for line, module in imports:
            if not _names(module, ARRAY_LIBRARIES) or allowed:
                continue
            if module.startswith(NCCL_BINDING) and name == "xpnet/distributed/nccl.py":
                continue
            wrong.append(f"{name}:{line} imports {module}")
    assert wrong == [], "array libraries belong in xpnet/backend/ or xpnet/ops.py:\n" + \
        "\n".join(wrong)


def test_only_distributed_imports_mpi_or_nccl():
    wrong = [f"{name}:{line} imports {module}"
             for name, imports in _scan().items() if not name.startswith("xpnet/distributed/")
             for line, module in imports
             if _names(module, COMMUNICATION) or "nccl" in module.lower()]
    assert wrong == [], "MPI and NCCL belong in xpnet/distributed/:\n" + "\n".join(wrong)


def test_the_scan_sees_the_imports_that_are_allowed():
    """Not vacuous: the allowed homes' own imports are found."""
    scan = _scan()
    backend = {m for n, imports in scan.items() if n.startswith("xpnet/backend/")
               for _, m in imports}
    assert {"cupy", "torch"} <= {m.split(".")[0] for m in backend}
    assert any(m.startswith("mpi4py") for _, m in scan["xpnet/distributed/mpi.py"])
    assert any(m.startswith(NCCL_BINDING) for _, m in scan["xpnet/distributed/nccl.py"])
