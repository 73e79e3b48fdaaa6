"""The one pure mapping from our configs to Megatron-Core's ``TransformerConfig``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from megatron_tulu.config.schema import ModelConfig, ParallelConfig, PrecisionConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def to_transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    *,
    on_cuda: bool,
    **overrides: Any,
) -> TransformerConfig:
    """Build the Llama ``TransformerConfig`` for a layout.

    ``on_cuda`` is explicit (not probed) so the function stays pure and testable on CPU.
    Loss normalisation is per-token style (``calculate_per_token_loss``): loss functions return
    (sum, denominator) and ``finalize_model_grads`` divides by the global denominator, which makes
    gradients independent of the micro-batch / DP split.
    """
    if precision.params_dtype not in DTYPES:
        raise ValueError(
            f"precision.params_dtype must be one of {sorted(DTYPES)}, got {precision.params_dtype!r}"
        )
    dtype = DTYPES[precision.params_dtype]
    kwargs: dict[str, Any] = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,  # Tülu 3 trains with dropout off so rollout/learner log-probs match
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        expert_model_parallel_size=parallel.ep,
        sequence_parallel=parallel.sequence_parallel,
        use_cpu_initialization=not on_cuda,
        calculate_per_token_loss=True,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        # Megatron's fused softmax needs a separately built CUDA extension; TE's spec has its own.
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        deallocate_pipeline_outputs=False,
    )
    kwargs.update(recompute_settings(parallel.recompute))
    if precision.fp8 is not None:
        if not on_cuda:
            raise ValueError("precision.fp8 needs CUDA and Transformer Engine; unset it on CPU")
        kwargs.update(fp8=precision.fp8, fp8_recipe=precision.fp8_recipe)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


RECOMPUTE = ("none", "selective", "full")


def recompute_settings(mode: str) -> dict[str, Any]:
    """``parallel.recompute`` -> Megatron's recompute fields (full: uniform, one layer per chunk)."""
    if mode not in RECOMPUTE:
        raise ValueError(f"parallel.recompute must be one of {RECOMPUTE}, got {mode!r}")
    if mode == "none":
        return {}
    if mode == "selective":
        return {"recompute_granularity": "selective"}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def padded_vocab_size(model: ModelConfig, tp: int) -> int:
    """Megatron's padded vocabulary: a multiple of ``make_vocab_size_divisible_by * tp``."""
    multiple = model.make_vocab_size_divisible_by * tp
    return -(-model.vocab_size // multiple) * multiple
