"""The README's Python snippets run as written, in order, on every backend."""

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_api_tour():
    text = README.read_text()
    assert "## Quick start" in text
    blocks = re.findall(r"## Quick start.*?```bash\n(.*?)```", text, flags=re.S)
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert "examples/mnist_cnn.py" in commands[0]
    assert "pytest" in commands[1] and ".[test]" in commands[1]
    assert len(snippets()) >= 5


def _quick_start() -> str:
    text = README.read_text()
    return text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start"))]


def test_quick_start_says_it_downloads_and_how_to_point_at_a_copy():
    quick = _quick_start()
    assert "downloads\nMNIST" in quick or "downloads MNIST" in quick
    assert "--data-dir DIR" in quick and "XPNET_DATA_DIR=DIR" in quick
    assert "../shared" not in quick


def test_quick_start_installs_no_cuda_torch():
    """The test line needs no torch; the torch route is PyTorch's CPU wheel index, never a bare
    torch requirement that the default index resolves to the CUDA build."""
    quick = _quick_start()
    blocks = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert "torch" not in blocks[0]
    torch_lines = [line for b in blocks[1:] for line in b.splitlines() if "torch" in line]
    assert torch_lines == ["pip install torch==2.13.0 --index-url "
                           "https://download.pytorch.org/whl/cpu"]
    pin = (README.parent / "backends" / "torch.txt").read_text().splitlines()
    assert [line for line in pin if line and not line.startswith("#")] == ["torch==2.13.0"]


def missing_extras(code: str) -> list[str]:
    """The modules a snippet's first line ``# needs: a, b`` names that are not installed (such
    a snippet is skipped without them: the optional extras)."""
    m = re.match(r"# needs: (.+)\n", code)
    names = [n.strip() for n in m.group(1).split(",")] if m else []
    return [n for n in names if not _installed(n)]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses the name outright
        return False


def test_missing_extras_reads_the_first_line():
    assert missing_extras("# needs: numpy, no_such_module_xyz\nimport numpy\n") == \
        ["no_such_module_xyz"]
    assert missing_extras("import numpy  # needs: no_such_module_xyz\n") == []


def test_readme_snippets_run(backend, capsys):
    namespace: dict = {}
    skipped = []
    for i, code in enumerate(snippets()):
        if missing_extras(code):
            skipped.append(f"snippet {i + 1} (needs {', '.join(missing_extras(code))})")
            continue
        try:
            exec(compile(code, f"README.md snippet {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"README snippet {i + 1} failed on {backend.name}:\n{code}") \
                from exc
    out = capsys.readouterr().out
    assert "['0.W', '0.b', '2.W', '2.b']" in out
    assert "(8, 10)" in out
    assert "expected (N, 2)" in out
    assert "unknown backend 'tensorflow'" in out
    assert "to load a weights file or checkpoint use xpnet.load_weights(model, path)" in out
    if skipped:  # everything else ran and passed; say what did not run
        pytest.skip(f"README {'; '.join(skipped)} not run: install the extras")
