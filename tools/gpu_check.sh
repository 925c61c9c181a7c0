#!/usr/bin/env bash
# One call on a GPU machine: build rvos_d2._C for the visible GPU, check the CUDA op against the
# PyTorch reference (fp32 / fp16 / bf16 forward and gradients, odd shapes, an unreached level, no
# queries, a large batch, float64 gradcheck, autocast), benchmark it against the PyTorch path and
# write one JSON summary. Needs python3 with torch and a CUDA toolkit (nvcc); no detectron2.
#
#   bash tools/gpu_check.sh [OUTPUT_DIR]     # default: $OUT if set, else ./gpu_check
#
# Writes OUTPUT_DIR/summary.json and OUTPUT_DIR/build.log. Exit status: 0 all checks passed,
# 1 a check failed, 2 no CUDA device, 3 the build failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTPUT_DIR=${1:-${OUT:-./gpu_check}}
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    echo "gpu_check: no CUDA device: torch in $PYTHON sees no GPU (torch.cuda.is_available()" \
        "is False); run this on a machine with an NVIDIA GPU" >&2
    exit 2
fi

mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR=$(cd "$OUTPUT_DIR" && pwd)
cd "$ROOT"

# Build in place for the visible GPU only (a wheel or .so from another machine may not load here).
ARCH=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
export FORCE_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "gpu_check: building rvos_d2._C for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" >&2
start=$(date +%s)
if ! "$PYTHON" setup.py build_ext --inplace >"$OUTPUT_DIR/build.log" 2>&1; then
    tail -n 40 "$OUTPUT_DIR/build.log" >&2
    echo "gpu_check: building rvos_d2._C failed (full log: $OUTPUT_DIR/build.log)" >&2
    exit 3
fi
build_seconds=$(($(date +%s) - start))
echo "gpu_check: built in ${build_seconds} s; running checks and benchmarks" >&2

extra=$(printf '{"build": {"seconds": %d, "torch_cuda_arch_list": "%s"}, "commit": "%s"}' \
    "$build_seconds" "$TORCH_CUDA_ARCH_LIST" "$(git rev-parse HEAD 2>/dev/null || echo unknown)")
status=0
"$PYTHON" rvos_d2/layers/gpu_check.py --device cuda --output "$OUTPUT_DIR/summary.json" \
    --extra "$extra" >/dev/null || status=$?
echo "gpu_check: summary in $OUTPUT_DIR/summary.json (exit status $status)" >&2
exit "$status"
