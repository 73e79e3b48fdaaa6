"""Kernels of megatron-tulu, importable as ``megatron_tulu.kernels`` (the top-level ``kernels/``
directory is mapped into the package by setup.py, so it never shadows Hugging Face's ``kernels``).

Each kernel has a PyTorch implementation (CPU, and the reference every test compares against)
and a Triton implementation for CUDA, behind one function that picks by device. This package
imports only torch (Triton lazily, megatron-core only to find the default TP group), so the GPU
benchmark suite can load it on a machine without vLLM or Transformer Engine.
"""

# With the repository root on sys.path (pytest's pythonpath, `python -m` from the root) this
# directory is also reachable as a top-level ``kernels``, the name of Hugging Face's package that
# transformers probes by importing it. Under any name but its own it stays an empty module (no
# torch imports, no __version__), so that probe is cheap and correctly finds no HF ``kernels``.
if __name__ == "megatron_tulu.kernels":
    from .fp8 import BLOCK, FP8_DTYPE, FP8_MAX, blockwise_fp8_dequantize, blockwise_fp8_quantize, scale_shape
    from .fused_logprob import (
        chunk_tokens_for,
        fused_vocab_parallel_log_probs,
        triton_available,
        unfused_vocab_parallel_log_probs,
    )

    __all__ = [
        "BLOCK",
        "FP8_DTYPE",
        "FP8_MAX",
        "blockwise_fp8_dequantize",
        "blockwise_fp8_quantize",
        "chunk_tokens_for",
        "fused_vocab_parallel_log_probs",
        "scale_shape",
        "triton_available",
        "unfused_vocab_parallel_log_probs",
    ]
