#!/usr/bin/env bash
# Main job on the embedded default (CPU, offline): build the tiny Llama + tokenizer, import it into a
# Megatron-Core distributed checkpoint at TP2 (2 gloo ranks), greedy-generate from it at PP2,
# and export it back to HF safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/demo}
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT"
$PY -m megatron_tulu.cli build-tiny --out "$OUT/tiny"
$PY -m torch.distributed.run --nproc_per_node 2 -m megatron_tulu.cli convert hf-to-mcore \
  --hf "$OUT/tiny" --out "$OUT/mcore" parallel.tp=2
$PY -m torch.distributed.run --nproc_per_node 2 -m megatron_tulu.cli generate \
  --ckpt "$OUT/mcore" --tokenizer "$OUT/tiny" --prompt "What is 2+2?" --chat --max-new-tokens 16 parallel.pp=2
$PY -m megatron_tulu.cli convert mcore-to-hf --ckpt "$OUT/mcore" --out "$OUT/exported"
echo "demo artifacts in $OUT"
