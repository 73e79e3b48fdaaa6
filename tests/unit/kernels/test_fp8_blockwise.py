"""Blockwise FP8 (e4m3, 128x128, fp32 scale-inverse) quantization: vLLM's bytes and its inverse.

Byte-identity is checked against the installed vLLM's own ``scaled_quantize`` (the function its
fp8 block path uses), so a drift in either side's rounding, scale formula or layout fails here.
The Triton kernel runs under TRITON_INTERPRET=1 (see test_fused_logprob_kernel.py).
"""

from __future__ import annotations

import os

import pytest
import torch
from megatron_tulu.kernels import (
    FP8_DTYPE,
    blockwise_fp8_dequantize,
    blockwise_fp8_quantize,
    scale_shape,
)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
IMPLS = ["torch", "triton"] if INTERPRET else ["torch"]


def weight(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * torch.logspace(-3, 1, shape[1])  # blocks of very different range
    w[:128, :128] = 0.0  # an all-zero block (amax floor)
    w[-1, -1] = -0.0
    w[0, -1] = 1e-9  # underflows to (signed) zero
    return w.to(dtype)


def as_bytes(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(256, 384), (128, 1024)])
def test_byte_identical_to_vllm_scaled_quantize(impl, dtype, shape):
    quant_utils = pytest.importorskip("vllm.model_executor.layers.quantization.utils.quant_utils")
    w = weight(shape, dtype)
    q_ref, s_ref = quant_utils.scaled_quantize(
        w, quant_utils.GroupShape(128, 128), FP8_DTYPE, compute_dtype=torch.float32
    )
    q, s = blockwise_fp8_quantize(w, impl=impl)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32 and s.shape == scale_shape(shape)
    assert torch.equal(as_bytes(q), as_bytes(q_ref))
    assert torch.equal(s.view(torch.int32), s_ref.view(torch.int32))
    # and vLLM's own dequantization of our bytes gives our dequantization
    deq_ref = quant_utils.scaled_dequantize(q, s, quant_utils.GroupShape(128, 128))
    assert torch.equal(blockwise_fp8_dequantize(q, s, impl=impl), deq_ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_ragged_edges_match_padded_quantization(impl):
    """Shapes not divisible by 128: each edge block is quantized as if zero-padded to 128."""
    w = weight((200, 300), torch.bfloat16, seed=1)
    q, s = blockwise_fp8_quantize(w, impl=impl)
    padded = torch.nn.functional.pad(w.float(), (0, 84, 0, 56))
    q_pad, s_pad = blockwise_fp8_quantize(padded, impl="torch")
    assert s.shape == (2, 3) and torch.equal(s, s_pad)
    assert torch.equal(as_bytes(q), as_bytes(q_pad[:200, :300]))


@pytest.mark.parametrize("impl", IMPLS)
def test_dequantize_error_is_within_e4m3_precision(impl):
    w = weight((256, 256), torch.float32, seed=2)
    q, s = blockwise_fp8_quantize(w, impl=impl)
    back = blockwise_fp8_dequantize(q, s, out_dtype=torch.float32, impl=impl)
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2**-4 for normal values; values far
    # below their block's amax fall into subnormals, whose absolute error is <= scale_inv * 2**-10
    blocks_s = s.repeat_interleave(128, 0).repeat_interleave(128, 1)
    bound = torch.maximum(w.abs() * 2**-4, blocks_s * 2**-10) * 1.0001
    assert torch.all((back - w).abs() <= bound)
    assert torch.count_nonzero(q.float()) > 0.5 * q.numel()  # not all flushed to zero (one block is zero)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        blockwise_fp8_quantize(torch.zeros(4, 4, 4))
    q, s = blockwise_fp8_quantize(torch.randn(256, 256))
    with pytest.raises(ValueError, match="does not fit"):
        blockwise_fp8_dequantize(q, s[:1])
