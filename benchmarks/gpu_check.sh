#!/usr/bin/env bash
# Kept for old instructions only: the GPU check is benchmarks/gpu_check.py (see its --help).
#   python3 benchmarks/gpu_check.py --data-dir DATA [--wheels WHEELS] [--out DIR]
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
