#!/usr/bin/env bash
# Rehearse the GPU suite here, on a CPU, under the GPU machine's own software: Python 3.12,
# torch 2.11.0 and Triton 3.6.0 (what the lent H100/H200 machine carries), in a side venv.
# It runs run_all.sh's CPU correctness mode (every section; the FP8 GEMM calls of all 15 GPU
# shapes judged by torch 2.11's own scaled_mm checks on meta tensors; the Megatron train step from
# the packed benchmarks/gpu/.deps, as on the GPU machine) and compile_check.py (every Triton
# launch compiled for sm_90a by Triton 3.6's NVIDIA backend + ptxas). It needs PyPI (torch 2.11's
# wheel and its CUDA libraries: ~4.7 GB in the venv); nothing from the venv ever travels.
#
#   benchmarks/gpu/rehearse.sh [VENV]     (default /tmp/megatron-tulu-gpu-stack)
#
# NumPy stays below 2.4: Triton 3.6's interpreter fails on 2.4 (the suite says so); on the GPU
# the kernels are compiled and the machine's NumPy 2.5 does not matter.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-/tmp/megatron-tulu-gpu-stack}
PY312=${PYTHON312:-$(command -v python3.12 || true)}
if [ -z "$PY312" ]; then
  echo "error: rehearse.sh needs python3.12 (the GPU machine's Python); set PYTHON312=/path/to/python3.12" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.11.0 triton==3.6.0 'numpy<2.4' packaging psutil
fi
[ -d benchmarks/gpu/.deps/megatron ] || benchmarks/gpu/run_all.sh --pack-deps
OUT=benchmarks/results/gpu/rehearsal
mkdir -p "$OUT"
"$VENV/bin/python" -c "import sys, torch, triton, numpy; print('stack: python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
PYTHON="$VENV/bin/python" benchmarks/gpu/run_all.sh --out-dir "$OUT"
PYTHONPATH="$PWD" "$VENV/bin/python" benchmarks/gpu/compile_check.py --out "$OUT/sm90_compile.json"
echo "rehearsal passed: $OUT/cpu_correctness.json, $OUT/sm90_compile.json"
