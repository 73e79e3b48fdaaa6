#!/usr/bin/env bash
# Main job on the embedded default (CPU, offline): the Tülu 3 recipe end to end on the tiny Llama:
# SFT -> length-normalized DPO -> RLVR (PPO, vLLM CPU rollouts, verifiable rewards), then a table of
# held-out verifiable accuracy after each stage, the RLVR curves PNG, and a greedy answer from the
# final policy through the Megatron engine at TP2.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/demo}
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore VLLM_LOGGING_LEVEL=WARNING
mkdir -p "$OUT"
$PY -m megatron_tulu.cli pipeline output_dir="$OUT"
OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc_per_node 2 -m megatron_tulu.cli generate \
  --hf "$OUT/rlvr/hf" --prompt "Describe the city at night briefly. Use only lowercase letters." \
  --chat --max-new-tokens 40 parallel.tp=2
# README's table is the recorded result (docs/demo_summary.json): say whether this run printed it
$PY scripts/check_demo.py "$OUT/summary.json" || echo "(the demo ran; its numbers differ from README's, see above)"
echo "demo artifacts in $OUT: summary.json, rlvr/curves.png; metrics.jsonl, tensorboard/, checkpoints/, hf/ per stage"
