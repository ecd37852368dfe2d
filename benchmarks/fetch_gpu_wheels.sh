#!/usr/bin/env bash
# Download every wheel benchmarks/gpu_check.py needs into one folder, on a machine WITH a network,
# for a CUDA machine WITHOUT one (Python 3.12, manylinux x86_64):
#
#   bash benchmarks/fetch_gpu_wheels.sh gpu-wheels          # CUDA 12 driver (default)
#   CUDA=13 bash benchmarks/fetch_gpu_wheels.sh gpu-wheels  # CUDA 13 driver
#
# Carry gpu-wheels/ and the checkout (and MNIST) to the GPU machine, then:
#   python3.12 -m venv .venv && . .venv/bin/activate
#   python3 benchmarks/gpu_check.py --wheels gpu-wheels --data-dir DATA
# Environment: CUDA (12 or 13), TORCH_VERSION (default 2.13.0), PYTHON_VERSION (default 3.12),
# TORCH_INDEX (default: PyTorch's cu126 index for CUDA 12, PyPI for CUDA 13, whose Linux torch
# wheels are CUDA 13 builds). Not run end to end here (no route to download.pytorch.org); the
# CuPy side, cupy-cuda12x[ctk] -> CuPy 14.2.0 + cuda-toolkit 12.6.3 wheels, was resolved.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: fetch_gpu_wheels.sh DEST_FOLDER}
cuda=${CUDA:-12}
torch_version=${TORCH_VERSION:-2.13.0}
pyver=${PYTHON_VERSION:-3.12}
mkdir -p "$dest"
platform=(--only-binary=:all: --python-version "$pyver" --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
          --platform manylinux_2_17_x86_64)
req="$dest/requirements.txt"
case "$cuda" in
  12) sed -e 's/^torch$/torch=='"$torch_version"'/' "$here/gpu_requirements.txt" > "$req"
      torch_index=${TORCH_INDEX:-https://download.pytorch.org/whl/cu126} ;;
  13) sed -e 's/cupy-cuda12x\[ctk\]>=14,<15/cupy-cuda13x[ctk]>=14,<15/' \
          -e 's/^torch$/torch=='"$torch_version"'/' "$here/gpu_requirements.txt" > "$req"
      torch_index=${TORCH_INDEX:-https://pypi.org/simple} ;;
  *) echo "CUDA must be 12 or 13, got $cuda" >&2; exit 2 ;;
esac
# torch (and the nvidia-* CUDA libraries it pins) from PyTorch's index for that CUDA version,
# everything else from PyPI; one folder, so `pip --no-index --find-links` resolves both.
python3 -m pip download "${platform[@]}" -d "$dest" "torch==$torch_version" \
    --index-url "$torch_index" --extra-index-url https://pypi.org/simple
grep -v '^torch' "$req" | python3 -m pip download "${platform[@]}" -d "$dest" -r /dev/stdin
echo "wheels for Python $pyver, CUDA $cuda in $dest ($(find "$dest" -name '*.whl' | wc -l) files);"
echo "requirements: $req"
