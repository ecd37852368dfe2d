#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one script (issue: GPU for real). Run from the repo root
# on a machine with an NVIDIA GPU, CuPy and PyTorch CUDA installed, and MNIST in DATA:
#   DATA=/path/to/data bash benchmarks/gpu_check.sh [OUT_DIR]
# It writes OUT_DIR/gpu_check.log and one JSON line per measurement in OUT_DIR/gpu_results.jsonl.
# Needs xpnet's dependencies importable: `pip install -e ".[test]"` (on a machine without an
# index, install array-api-compat, array-api-extra, array-api-strict and tqdm from wheels first).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
DATA=${DATA:-../shared/data}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
RES="$OUT/gpu_results.jsonl"
: > "$RES"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XPNET_DATA_DIR="$DATA"
status=0
step() { echo "== $*" | tee -a "$LOG"; }
record() {  # $1 = label; stdin = a command's stdout, whose last line is JSON
  local last; last=$(tail -n 1)
  printf '{"label": "%s", "result": %s}\n' "$1" "$last" >> "$RES"
  echo "$1: $last" | tee -a "$LOG"
}

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import cupy, torch; print('cupy', cupy.__version__, 'cuda runtime',
             cupy.cuda.runtime.runtimeGetVersion(), 'torch', torch.__version__)"
  python -m xpnet info; } 2>&1 | tee -a "$LOG"

step "1. whole test suite, cupy cases included (gradient checks on the GPU)"
python -m pytest -q -m "gpu or not gpu" -p no:cacheprovider 2>&1 | tail -n 30 | tee -a "$LOG" \
  || status=1

step "2. mnist_cnn.py --epochs 1 on cupy and numpy: same test accuracy within 0.3 points"
for b in cupy numpy; do
  python examples/mnist_cnn.py --backend $b --epochs 1 --json --data-dir "$DATA" \
    2>>"$LOG" | record "mnist_cnn-epochs1-$b" || status=1
done

step "3. checkpoints cross backends: train 1 epoch on one, resume the 2nd on the other"
for pair in "cupy numpy" "numpy cupy"; do
  set -- $pair
  ck="$OUT/ck-$1-$2.npz"; rm -f "$ck"
  python examples/mnist_cnn.py --backend "$1" --epochs 1 --train-limit 6000 --checkpoint "$ck" \
    --json --data-dir "$DATA" 2>>"$LOG" | record "ckpt-save-$1" || status=1
  python examples/mnist_cnn.py --backend "$2" --epochs 2 --train-limit 6000 --checkpoint "$ck" \
    --resume --json --data-dir "$DATA" 2>>"$LOG" | record "ckpt-resume-$1-on-$2" || status=1
done

step "4. benchmarks: xpnet-cupy vs xpnet-numpy vs torch CUDA, cnn and mlp, batch 100 and 1000"
for model in cnn mlp; do
  script=examples/mnist_cnn.py; [ $model = mlp ] && script=examples/mnist_mlp.py
  for bs in 100 1000; do
    python benchmarks/torch_cuda_reference.py --model $model --batch-size $bs --epochs 2 \
      --json --data-dir "$DATA/mnist" 2>>"$LOG" | record "torch-cuda-$model-bs$bs" || status=1
    python $script --backend cupy --epochs 2 --batch-size $bs --json --data-dir "$DATA" \
      2>>"$LOG" | record "xpnet-cupy-$model-bs$bs" || status=1
    python $script --backend numpy --epochs 1 --batch-size $bs --json --data-dir "$DATA" \
      2>>"$LOG" | record "xpnet-numpy-$model-bs$bs" || status=1
  done
done
step "5. data parallel on GPUs over NCCL (2+ GPUs, mpi4py): collectives, 2 ranks vs 1 process"
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$ngpu" -ge 2 ] && python -c "import mpi4py, cupy.cuda.nccl" 2>>"$LOG"; then
  XPNET_TEST_BACKENDS=cupy timeout 300 mpiexec -n 2 python tests/distributed_worker.py \
    collectives 2>&1 | tail -n 20 | tee -a "$LOG" || status=1
  python examples/mnist_cnn.py --backend cupy --epochs 1 --train-limit 6000 --json \
    --data-dir "$DATA" 2>>"$LOG" | record "mnist_cnn-1proc-cupy" || status=1
  timeout 600 mpiexec -n 2 python examples/mnist_cnn.py --backend cupy --epochs 1 \
    --train-limit 6000 --json --data-dir "$DATA" 2>>"$LOG" | record "mnist_cnn-2ranks-nccl" \
    || status=1
  timeout 600 mpiexec -n 2 python benchmarks/distributed_bench.py --backend cupy --json \
    2>>"$LOG" | record "distributed-bench-2ranks-nccl" || status=1
else
  echo "skipped: $ngpu GPU(s); needs 2 and mpi4py + cupy.cuda.nccl (pip install '.[mpi]')" \
    | tee -a "$LOG"
fi
echo "gpu_check finished with status $status" | tee -a "$LOG"
exit $status
