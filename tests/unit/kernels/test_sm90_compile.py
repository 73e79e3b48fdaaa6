"""Every Triton kernel compiles for Hopper (sm_90a) without register spills, checked without a GPU.

The interpreter run (test_fused_logprob_kernel.py) checks the kernels' values; this compiles the
library's own launches (same arguments, constexprs, warps) with Triton's NVIDIA backend and
ptxas, which the interpreter never exercises.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO


def test_kernels_compile_for_sm90_without_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia.compiler")
    out = tmp_path / "sm90.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu" / "compile_check.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["target"] == "sm_90a" and result["all_ok"]
    from megatron_tulu.kernels import fp8, fused_logprob

    defined = {k.__name__ for m in (fp8, fused_logprob) for k in m._triton_kernels().values()}
    assert {r["kernel"] for r in result["kernels"]} == defined  # every kernel the package defines
    for row in result["kernels"]:
        assert row["registers"] > 0 and row["spill_store_bytes"] == row["spill_load_bytes"] == 0, row
    fp8_rows = [r for r in result["kernels"] if r["kernel"] in ("quant_kernel", "dequant_kernel")]
    assert fp8_rows and all(r["approximate_ops"] == {} for r in fp8_rows)  # byte-exact: IEEE ops only
    assert all(any("e4m3" in c for c in r["fp8_casts"]) for r in fp8_rows)  # the hardware cast


def test_approximate_ops_are_counted_by_opcode():
    """What keeps the FP8 kernels byte-exact on the GPU: Triton's plain fp32 `/` compiles to
    div.full.f32 (seen: the quant kernel with `1.0 / amax` fails compile_check.py), div_rn to div.rn."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compile_check", REPO / "benchmarks" / "gpu" / "compile_check.py"
    )
    cc = importlib.util.module_from_spec(spec)
    sys.modules["compile_check"] = cc
    spec.loader.exec_module(cc)
    ptx = """
        div.full.f32 %r3, %r1, %r2;
        div.rn.f32 %r4, %r1, %r2;
        rcp.approx.ftz.f32 %r5, %r1;
        ex2.approx.f32 %r6, %r5;
        ex2.approx.f32 %r7, %r6;
        cvt.rn.satfinite.e4m3x2.f32 %rs1, %r6, %r7;
    """
    assert cc.approximate_ops(ptx) == {"div.full.f32": 1, "rcp.approx.ftz.f32": 1, "ex2.approx.f32": 2}
    assert cc.approximate_ops("div.rn.f32 %r4, %r1, %r2;") == {}


def test_launch_signature_follows_the_arguments():
    """The AOT signature comes from the launch's own arguments (so it cannot drift from the launcher)."""
    pytest.importorskip("triton")
    from megatron_tulu.kernels import fp8

    w = torch.empty(300, 260, dtype=torch.bfloat16, device="meta")
    launch = fp8.quant_launch(w, 128)
    q, s = launch.result
    assert launch.grid == (3, 3) and q.dtype == torch.float8_e4m3fn and s.shape == (3, 3)
    sig = launch.signature()
    assert sig["x_ptr"] == "*bf16" and sig["q_ptr"] == "*fp8e4nv" and sig["s_ptr"] == "*fp32"
    assert sig["rows"] == "i32" and sig["fp8_max"] == "fp32" and sig["BLOCK"] == "constexpr"
    wide = torch.empty(2, 2**25, dtype=torch.bfloat16, device="meta")
    with pytest.raises(ValueError, match="32-bit in-block offsets"):
        fp8.quant_launch(wide, 128)


def test_cuda_fp32_accumulating_gemm_call_is_well_formed():
    """The weight-gradient GEMM on CUDA (bf16 operands, fp32 output, torch >= 2.9) cannot run on a
    CPU, but its call is checked here on meta tensors: the op and its dtype rule exist."""
    from megatron_tulu.kernels import fused_logprob

    if not fused_logprob._MM_OUT_DTYPE:
        pytest.skip("torch < 2.9 takes the fp32-operand branch")
    a = torch.empty(64, 32, dtype=torch.bfloat16, device="meta")
    b = torch.empty(32, 16, dtype=torch.bfloat16, device="meta")
    out = torch.mm(a, b, out_dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == (64, 16)
