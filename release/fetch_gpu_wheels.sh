#!/usr/bin/env bash
# Fetch the three wheels release/gpu_check.py --preinstalled installs on the GPU machine, on a
# machine with a network, into a git-ignored folder (default .gpu-wheels/):
#
#   bash release/fetch_gpu_wheels.sh [DEST]
#
# For each Python version in PYTHON_VERSIONS (default "3.12 3.11": the GPU machine's and CI's)
# this runs
#   python3 -m pip download --no-deps --only-binary=:all: --python-version V -d DEST \
#       -r release/gpu_wheels.txt
# The wheels are pure Python (py3-none-any), so both versions resolve to the same three files;
# a fourth file would mean a version-specific wheel, and the script stops.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu-wheels}
mkdir -p "$dest"
for version in ${PYTHON_VERSIONS:-3.12 3.11}; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
        -d "$dest" -r release/gpu_wheels.txt
done
count=$(find "$dest" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$count" != 3 ]; then
    echo "fetch_gpu_wheels: expected 3 wheels in $dest, found $count:" >&2
    ls "$dest" >&2
    exit 1
fi
ls -l "$dest"/*.whl
