#!/usr/bin/env bash
# Build both images from this checkout and smoke-run them, where a Docker daemon already runs
# (this script starts none). Exits non-zero on the first failure.
#
#   bash docker/build_and_smoke.sh                     # the default bases from Docker Hub
#   CPU_BASE=local/bookworm-python:stand-in GPU_BASE=local/bookworm-python:stand-in \
#       bash docker/build_and_smoke.sh                 # a local base (no registry needed)
#
# Environment: CPU_BASE, GPU_BASE (the images' BASE build argument; unset = the Dockerfiles'
# defaults), CUDA_MAJOR (12 or 13: the GPU image's CUDA wheels), WITH_TORCH=1 (also build
# xpnet:cpu-torch, TORCH_INDEX / TORCH_FIND_LINKS passed through), BUILD_NETWORK (docker build
# --network, e.g. host to reach a local wheel server), GPU=1 (run the GPU image with --gpus all
# and expect the smoke to pass; default: expect its one-line refusal, exit 1, as on a machine
# with no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
docker info > /dev/null  # fails here, naming the reason, when no daemon answers

build() {  # build TAG DOCKERFILE [--build-arg ...]
    local tag=$1 file=$2; shift 2
    local args=("$@")
    [ -n "${BUILD_NETWORK:-}" ] && args+=(--network "$BUILD_NETWORK")
    echo "== docker build -t $tag -f $file ${args[*]} ."
    docker build -t "$tag" -f "$file" "${args[@]}" .
}

base_arg() { [ -n "${1:-}" ] && printf '%s\n' --build-arg "BASE=$1"; }

mapfile -t cpu_base < <(base_arg "${CPU_BASE:-}")
mapfile -t gpu_base < <(base_arg "${GPU_BASE:-}")
build xpnet:cpu docker/Dockerfile.cpu "${cpu_base[@]}"
if [ "${WITH_TORCH:-0}" = 1 ]; then
    torch_args=(--build-arg WITH_TORCH=1)
    [ -n "${TORCH_INDEX:-}" ] && torch_args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
    [ -n "${TORCH_FIND_LINKS:-}" ] && torch_args+=(--build-arg "TORCH_FIND_LINKS=$TORCH_FIND_LINKS")
    build xpnet:cpu-torch docker/Dockerfile.cpu "${cpu_base[@]}" "${torch_args[@]}"
fi
build xpnet:gpu docker/Dockerfile "${gpu_base[@]}" \
    --build-arg "CUDA_MAJOR=${CUDA_MAJOR:-12}"

# NVRTC, as CuPy calls it, on a kernel that includes a CUDA header found in the image's wheels
nvrtc_probe='
import glob, cupy
from cupy_backends.cuda.libs import nvrtc
inc = sorted({p.rsplit("/", 1)[0] for p in glob.glob(
    "/opt/venv/lib/python3*/site-packages/nvidia/*/include/cuda_fp16.h")})
src = "#include <cuda_fp16.h>\nextern \"C\" __global__ void k(float* x) { x[0] = __half2float(__float2half(1.0f)); }"
prog = nvrtc.createProgram(src, "k.cu", [], [])
nvrtc.compileProgram(prog, ["-arch=compute_80"] + ["-I" + d for d in inc])
print("NVRTC", nvrtc.getVersion(), "compiled a cuda_fp16.h kernel with", inc, "for CuPy", cupy.__version__)
'

echo "== smoke: xpnet:cpu (numpy)"
docker run --rm xpnet:cpu
if [ "${WITH_TORCH:-0}" = 1 ]; then
    echo "== smoke: xpnet:cpu-torch (torch, CPU build)"
    docker run --rm -e XPNET_BACKEND=torch xpnet:cpu-torch
fi

if [ "${GPU:-0}" = 1 ]; then
    echo "== smoke: xpnet:gpu with --gpus all"
    docker run --rm --gpus all xpnet:gpu
else
    echo "== xpnet:gpu: NVRTC compiles a kernel with the image's CUDA headers (needs no GPU)"
    docker run --rm xpnet:gpu python -c "$nvrtc_probe"
    echo "== smoke: xpnet:gpu without a GPU (expect one error line and exit 1)"
    set +e
    err=$(docker run --rm xpnet:gpu 2>&1 >/dev/null)
    status=$?
    set -e
    echo "$err"
    if [ "$status" != 1 ] || [ "$(printf '%s\n' "$err" | wc -l)" != 1 ] \
            || [[ "$err" != "xpnet: error: backend 'cupy' cannot run here"* ]]; then
        echo "FAIL: expected exit 1 and one line \"xpnet: error: backend 'cupy' cannot run" \
             "here: ...\"; got exit $status" >&2
        exit 1
    fi
fi

echo "== sizes"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^xpnet:'
echo "build_and_smoke: OK"
