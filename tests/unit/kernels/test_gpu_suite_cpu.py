"""benchmarks/gpu/run_all.sh on a CPU machine: its correctness-only mode passes and says so.

The GPU suite cannot be measured here, but its every section (FP8 GEMM variants, fused log-prob
with the Triton kernel in the interpreter, FP8 quantization kernel, the Megatron train step) runs
at small sizes, so the script stays ready for the first GPU it meets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

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
    # every FP8 GEMM variant's call at the 15 GPU shapes, judged by torch's own scaled_mm checks
    assert sum("GPU shapes (meta tensors)" in n for n in names) == 3
    assert all(v["refused"] == [] for v in result["sections"]["gemm"]["gpu_shape_calls"].values())
    # a resume through the DistributedOptimizer: step counts and bit-exactness
    assert result["sections"]["resume"]["adam_steps_after"] == [2.0]
    assert any("DistributedOptimizer is bit-exact" in n for n in names)
    assert not list(tmp_path.glob("gemm.json"))  # no speed numbers from a CPU


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu" / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = suite
    spec.loader.exec_module(suite)
    return suite


def test_gpu_shape_call_check_refuses_a_wrong_scale_layout():
    """The meta-tensor check can fail: block scales in the row-major layout cuBLASLt rejects."""
    suite = _suite()
    F = torch.nn.functional
    if not suite._has_scaled_mm_v2():
        pytest.skip("this torch has no block-scaled scaled_mm")
    kernels = suite.load_kernels()

    def row_major_scales(a, w):
        a8, sa = suite._quant_1x128(a)  # [M, K/128] row-major: cuBLASLt wants it M-major
        w8, sw = kernels.blockwise_fp8_quantize(w)
        return lambda: F.scaled_mm(a8, w8.t(), sa, F.ScalingType.BlockWise1x128, sw.t(),
                                   F.ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)  # fmt: skip

    checks = suite.Checks()
    good = suite.fp8_variants(kernels)["fp8_block128"]
    result = suite.check_gpu_shape_calls({"good": good, "row_major": row_major_scales}, checks)
    assert result["good"]["refused"] == [] and len(result["row_major"]["refused"]) == 15
    assert [c["ok"] for c in checks.items] == [True, False] and not checks.ok


def test_interpreter_clash_names_the_versions():
    clash = _suite().interpreter_clash
    assert "numpy<2.4" in clash("3.6.0", "2.4.6") and "Triton 3.6.0" in clash("3.6.0", "2.5.2")
    assert clash("3.6.0", "2.3.5") is None and clash("3.9.0", "2.4.6") is None
    assert clash(None, "2.4.6") is None and clash("3.6.0", None) is None
