#!/usr/bin/env bash
# Every GPU measurement of the kernels issue in one call: bf16 vs FP8 GEMMs, fused vs unfused
# log-prob, the FP8 quantization kernel's bandwidth, the Megatron train-step MFU, and a checkpoint
# resume through the DistributedOptimizer; results in
# benchmarks/results/gpu/*.json. Budget: under 8 minutes on one H100/H200 (torch + Triton; no TE,
# no vLLM, no network). On a machine without CUDA it checks correctness only (small sizes, Triton
# kernels in the interpreter), writes benchmarks/results/gpu/cpu_correctness.json and says so.
#
# The MFU section needs megatron-core (pure Python). On a machine without it, first run
#   benchmarks/gpu/run_all.sh --pack-deps      (here, where the venv has it)
# which copies the megatron package to benchmarks/gpu/.deps/ (~6 MiB, git-ignored: copy it to the
# GPU machine with the tree); this script puts that folder on PYTHONPATH when megatron is missing.
# Nothing else beyond torch + Triton is needed (no Hydra/OmegaConf, vLLM or TE: checked by running
# the CPU mode with those imports blocked).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [ "${1:-}" = "--pack-deps" ]; then
  src=$("$PY" -c "import megatron.core as c, os; print(os.path.dirname(os.path.dirname(c.__file__)))")
  rm -rf benchmarks/gpu/.deps && mkdir -p benchmarks/gpu/.deps
  # the compiled dataset helper is for one Python version and not needed here
  (cd "$(dirname "$src")" && tar --exclude='__pycache__' --exclude='*.so' -cf - megatron) | tar -xf - -C benchmarks/gpu/.deps
  du -sh benchmarks/gpu/.deps
  exit 0
fi

# the source tree first (megatron_tulu, and kernels/ loaded as megatron_tulu.kernels by the suite)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import megatron.core" >/dev/null 2>&1 && [ -d benchmarks/gpu/.deps/megatron ]; then
  export PYTHONPATH="$ROOT/benchmarks/gpu/.deps:$PYTHONPATH"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: correctness checks only (Triton kernels run in the interpreter)"
  export TRITON_INTERPRET=1
fi
export PYTHONWARNINGS=ignore
exec timeout "${GPU_SUITE_TIMEOUT:-470}" "$PY" benchmarks/gpu/suite.py --out-dir benchmarks/results/gpu "$@"
