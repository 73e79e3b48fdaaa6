"""Blockwise FP8 (e4m3) quantization of weight matrices, in the layout vLLM's ``fp8`` method loads.

A 2-D weight ``[out, in]`` is cut into 128x128 blocks; each block gets one fp32 scale so that its
largest magnitude maps to e4m3's 448. The checkpoint stores the fp8 weight and, per block, the
*inverse* scale (``weight_scale_inv``, shape ``[ceil(out/128), ceil(in/128)]``), which is what
vLLM reads for ``quantization_config = {quant_method: fp8, weight_block_size: [128, 128]}``.

The arithmetic is the same, operation for operation, as
``vllm.model_executor.layers.quantization.utils.quant_utils.scaled_quantize(x, GroupShape(128,
128), float8_e4m3fn, compute_dtype=float32)``: amax clamped at 1e-12, ``scale = 448 / amax``, the
block multiplied by ``scale``, clamped to +-448, rounded to e4m3 (nearest-even), and
``scale_inv = 1 / scale``; so for shapes vLLM accepts (both dims multiples of 128) the bytes are
identical (tested). Unlike that function, ragged edge blocks are allowed (the amax then covers
only the block's real elements), because TP shards of real models are not always multiples of 128.

PyTorch on CPU (and as the reference); Triton on CUDA, chosen by device.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from .triton_launch import TritonLaunch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
BLOCK = 128
_AMAX_FLOOR = 1e-12


def scale_shape(shape: tuple[int, int], block: int = BLOCK) -> tuple[int, int]:
    """Shape of ``weight_scale_inv`` for a weight of ``shape``."""
    return (-(-shape[0] // block), -(-shape[1] // block))


def _resolve(impl: str, device: torch.device) -> str:
    if impl == "auto":
        if device.type == "cuda":
            try:
                import triton  # noqa: F401

                return "triton"
            except ImportError:
                return "torch"
        return "torch"
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be auto|torch|triton, got {impl!r}")
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 (tests only)")
    return impl


def blockwise_fp8_quantize(
    weight: torch.Tensor, block: int = BLOCK, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` [M, N] (bf16/fp16/fp32) -> (fp8 e4m3 [M, N], fp32 scale_inv [ceil(M/b), ceil(N/b)])."""
    if weight.dim() != 2:
        raise ValueError(f"blockwise FP8 quantizes 2-D weights, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    if _resolve(impl, weight.device) == "triton":
        return quant_launch(weight, block).run()
    return _torch_quantize(weight, block)


def blockwise_fp8_dequantize(
    q: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK, out_dtype: torch.dtype = torch.float32,
    impl: str = "auto",
) -> torch.Tensor:  # fmt: skip
    """Inverse of :func:`blockwise_fp8_quantize`: ``q * scale_inv`` per block, in ``out_dtype``."""
    if q.dim() != 2 or tuple(scale_inv.shape) != scale_shape(tuple(q.shape), block):
        raise ValueError(
            f"scale_inv shape {tuple(scale_inv.shape)} does not fit weight {tuple(q.shape)} "
            f"with {block}x{block} blocks (expected {scale_shape(tuple(q.shape), block)})"
        )
    if _resolve(impl, q.device) == "triton":
        return dequant_launch(q, scale_inv, block, out_dtype).run()
    rows, cols = q.shape
    s = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (q.float() * s).to(out_dtype)


def _torch_quantize(weight: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = weight.shape
    bm, bn = scale_shape((rows, cols), block)
    x = weight.float()
    pr, pc = bm * block - rows, bn * block - cols
    if pr or pc:  # zero padding leaves every block's amax unchanged
        x = torch.nn.functional.pad(x, (0, pc, 0, pr))
    blocks = x.reshape(bm, block, bn, block)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=_AMAX_FLOOR)
    scale = FP8_MAX / amax  # torch: reciprocal(amax) * 448, as in vLLM's scaled_quantize
    q = (blocks * scale[:, None, :, None]).clamp(min=-FP8_MAX, max=FP8_MAX)
    q = q.reshape(bm * block, bn * block)[:rows, :cols].to(FP8_DTYPE).contiguous()
    return q, scale.float().reciprocal()


@functools.cache
def _triton_kernels() -> dict[str, Any]:
    import triton
    import triton.language as tl

    # One program per BLOCK x BLOCK block. Addresses: one 64-bit base per block, 32-bit offsets
    # inside it (BLOCK * stride < 2**31 for any weight row shorter than 16M elements); 64-bit
    # offsets per element cost two registers each and made these kernels spill on sm_90.

    @triton.jit
    def quant_kernel(x_ptr, q_ptr, s_ptr, rows, cols, stride_x, stride_q, n_bcols, fp8_max,
                     BLOCK: tl.constexpr):  # fmt: skip
        bi = tl.program_id(0)
        bj = tl.program_id(1)
        r = tl.arange(0, BLOCK)
        c = tl.arange(0, BLOCK)
        mask = (r[:, None] < rows - bi * BLOCK) & (c[None, :] < cols - bj * BLOCK)
        x_block = x_ptr + (bi * BLOCK).to(tl.int64) * stride_x + bj * BLOCK
        x = tl.load(x_block + r[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-12)
        # torch evaluates `448 / amax` as reciprocal(amax) * 448 (Tensor.__rtruediv__): same here
        scale = tl.math.div_rn(1.0, amax) * fp8_max
        y = tl.minimum(tl.maximum(x * scale, -fp8_max), fp8_max)
        # Round to the e4m3 grid in fp32 first (nearest-even through the add-and-subtract trick),
        # so the final cast is exact whatever rounding the cast itself does (Triton's interpreter
        # mis-carries mantissa overflow into the exponent; some GPUs emulate the cast).
        bits = tl.abs(y).to(tl.int32, bitcast=True)
        ulp_exp = tl.maximum(((bits >> 23) & 0xFF) - 127, -6) - 3  # e4m3: 3 mantissa bits, min exp -6
        big = ((ulp_exp + 23 + 127) << 23).to(tl.float32, bitcast=True)  # ulp * 2**23
        mag = (tl.abs(y) + big) - big
        y = tl.where(y.to(tl.int32, bitcast=True) < 0, -mag, mag)  # sign bit: keeps -0.0 as -0.0
        q_block = q_ptr + (bi * BLOCK).to(tl.int64) * stride_q + bj * BLOCK
        tl.store(q_block + r[:, None] * stride_q + c[None, :], y.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + bi * n_bcols + bj, tl.math.div_rn(1.0, scale))

    @triton.jit
    def dequant_kernel(q_ptr, s_ptr, o_ptr, rows, cols, stride_q, stride_o, n_bcols, BLOCK: tl.constexpr):
        bi = tl.program_id(0)
        bj = tl.program_id(1)
        r = tl.arange(0, BLOCK)
        c = tl.arange(0, BLOCK)
        mask = (r[:, None] < rows - bi * BLOCK) & (c[None, :] < cols - bj * BLOCK)
        q_block = q_ptr + (bi * BLOCK).to(tl.int64) * stride_q + bj * BLOCK
        q = tl.load(q_block + r[:, None] * stride_q + c[None, :], mask=mask, other=0.0)
        s = tl.load(s_ptr + bi * n_bcols + bj)
        out = (q.to(tl.float32) * s).to(o_ptr.dtype.element_ty)
        o_block = o_ptr + (bi * BLOCK).to(tl.int64) * stride_o + bj * BLOCK
        tl.store(o_block + r[:, None] * stride_o + c[None, :], out, mask=mask)

    return {"quant": quant_kernel, "dequant": dequant_kernel}


# A 128x128 fp32 block over 16 warps is 32 values a thread: no spills on sm_90 (85 / 64
# registers), where 4 warps spilled at 255 registers (benchmarks/gpu/compile_check.py). The GPU
# suite times 4 / 8 / 16 warps, so a GPU run can confirm or change this.
BLOCK_NUM_WARPS = 16


def _check_offsets(name: str, stride: int, block: int) -> None:
    if block * stride >= 2**31:
        raise ValueError(
            f"{name}: rows of {stride} elements are too long for the Triton kernel's 32-bit in-block offsets"
        )


def quant_launch(weight: torch.Tensor, block: int, num_warps: int = BLOCK_NUM_WARPS) -> TritonLaunch:
    """The quantize kernel over a 2-D ``weight``; its run returns (fp8 values, fp32 scale_inv)."""
    x = weight.contiguous()
    rows, cols = x.shape
    bm, bn = scale_shape((rows, cols), block)
    _check_offsets("weight", x.stride(0), block)
    q = torch.empty((rows, cols), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((bm, bn), dtype=torch.float32, device=x.device)
    return TritonLaunch(
        _triton_kernels()["quant"], (bm, bn),
        (x, q, s, rows, cols, x.stride(0), q.stride(0), bn, FP8_MAX), {"BLOCK": block}, num_warps, result=(q, s),
    )  # fmt: skip


def dequant_launch(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: int,
    out_dtype: torch.dtype,
    num_warps: int = BLOCK_NUM_WARPS,
) -> TritonLaunch:
    """The dequantize kernel; its run returns the ``out_dtype`` weight."""
    q = q.contiguous()
    rows, cols = q.shape
    bm, bn = scale_shape((rows, cols), block)
    _check_offsets("fp8 weight", q.stride(0), block)
    out = torch.empty((rows, cols), dtype=out_dtype, device=q.device)
    s = scale_inv.float().contiguous()
    return TritonLaunch(
        _triton_kernels()["dequant"], (bm, bn),
        (q, s, out, rows, cols, q.stride(0), out.stride(0), bn), {"BLOCK": block}, num_warps, result=out,
    )  # fmt: skip
