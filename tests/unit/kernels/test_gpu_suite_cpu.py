"""benchmarks/gpu/run_all.sh on a CPU machine: its correctness-only mode passes and says so.

The GPU suite cannot be measured here, but its every section (FP8 GEMM variants, fused log-prob
with the Triton kernel in the interpreter, FP8 quantization kernel, the Megatron train step) runs
at small sizes, so the script stays ready for the first GPU it meets.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.helpers import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the suite measures; run it directly")
def test_run_all_cpu_correctness(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHON=str(REPO / ".venv" / "bin" / "python"), OMP_NUM_THREADS="1")
    if not os.access(env["PYTHON"], os.X_OK):
        env.pop("PYTHON")
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu" / "run_all.sh"), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "correctness checks only" in proc.stdout and "all checks passed" in proc.stdout
    result = json.loads((tmp_path / "cpu_correctness.json").read_text())
    assert result["info"]["mode"] == "cpu-correctness-only" and result["all_checks_ok"]
    names = {c["check"] for c in result["checks"]}
    assert any("fused log-prob (triton)" in n for n in names) and any("fp8 quantize" in n for n in names)
    assert not list(tmp_path.glob("gemm.json"))  # no speed numbers from a CPU
