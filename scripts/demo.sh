#!/usr/bin/env bash
# Main job on the embedded default (CPU, offline): SFT then length-normalized DPO on the tiny
# Llama, then a greedy answer from the DPO model through the Megatron engine at TP2.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/demo}
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT"
# 8 epochs: enough for the 5M-parameter model to end its answers with EOS (~5 min on 2 cores)
$PY -m megatron_tulu.cli sft train.output_dir="$OUT/sft" sft.epochs=8
$PY -m megatron_tulu.cli dpo train.output_dir="$OUT/dpo" model.hf_path="$OUT/sft/hf"
OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc_per_node 2 -m megatron_tulu.cli generate \
  --hf "$OUT/dpo/hf" --prompt "Tom has 3 apples and buys 4 more. How many apples does Tom have?" \
  --chat --max-new-tokens 40 parallel.tp=2
echo "demo artifacts in $OUT (metrics.jsonl, tensorboard/, checkpoints/, hf/ per stage)"
