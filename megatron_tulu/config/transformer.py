"""The one pure mapping from our configs to Megatron-Core's ``TransformerConfig``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from megatron_tulu.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.config.validate import uneven_stage_overrides
from megatron_tulu.dtypes import SHORT_NAMES, torch_dtype


def megatron_parallel_sizes(parallel: ParallelConfig) -> dict[str, int | None]:
    """Our layout in Megatron-Core's names, which ``TransformerConfig`` and
    ``parallel_state.initialize_model_parallel`` share."""
    return {
        "tensor_model_parallel_size": parallel.tp,
        "pipeline_model_parallel_size": parallel.pp,
        "virtual_pipeline_model_parallel_size": parallel.vpp,
        "context_parallel_size": parallel.cp,
        "expert_model_parallel_size": parallel.ep,
    }


def to_transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    *,
    on_cuda: bool,
    te_version: str | None = "probe",
    **overrides: Any,
) -> TransformerConfig:
    """Build the Llama ``TransformerConfig`` for a layout.

    ``on_cuda`` is explicit (not probed) so the function stays pure and testable on CPU;
    ``te_version`` likewise ("probe" asks the installed Transformer Engine, used for FP8 only).
    Loss normalisation is per-token style (``calculate_per_token_loss``): loss functions return
    (sum, denominator) and ``finalize_model_grads`` divides by the global denominator, which makes
    gradients independent of the micro-batch / DP split.
    """
    if precision.params_dtype not in SHORT_NAMES:
        raise ValueError(
            f"precision.params_dtype must be one of {sorted(SHORT_NAMES)}, got {precision.params_dtype!r}"
        )
    dtype = torch_dtype(precision.params_dtype)
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
        **megatron_parallel_sizes(parallel),
        # a layer count PP does not divide (an RL value model in the policy's layout): Megatron's
        # first/last-stage counts, validated by validate_layout(..., uneven_stages=True)
        **uneven_stage_overrides(model.num_layers, parallel.pp, parallel.vpp),
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
        kwargs.update(
            fp8_settings(precision, installed_te_version() if te_version == "probe" else te_version)
        )
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


# User-facing FP8 recipe names -> Megatron's ``fp8_recipe`` values, with the first Transformer
# Engine release that has each (the gates of megatron/core/fp8_utils.py in megatron-core 0.16.1).
FP8_RECIPES: dict[str, tuple[str, str]] = {
    "delayed": ("delayed", "1.0"),
    "current": ("tensorwise", "2.2.0.dev0"),
    "tensorwise": ("tensorwise", "2.2.0.dev0"),
    "blockwise": ("blockwise", "2.3.0.dev0"),
    "mxfp8": ("mxfp8", "2.1.0"),
}
FP8_FORMATS = ("e4m3", "hybrid")
FP8_AMAX_ALGOS = ("max", "most_recent")


def installed_te_version() -> str | None:
    """Transformer Engine's version string, or None when it is not installed (CPU machines)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in (
        "transformer-engine",
        "transformer_engine",
        "transformer-engine-cu12",
        "transformer-engine-cu13",
    ):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def fp8_settings(precision: PrecisionConfig, te_version: str | None) -> dict[str, Any]:
    """``precision.fp8*`` -> TransformerConfig FP8 fields, refusing what TE cannot run.

    Pure (the TE version is passed in), so the whole mapping is tested on CPU although the TE
    wheel cannot run here. Raises ValueError naming the field to change.
    """
    from packaging.version import Version

    if precision.fp8 not in FP8_FORMATS:
        raise ValueError(f"precision.fp8 must be one of {FP8_FORMATS} or null, got {precision.fp8!r}")
    if precision.fp8_recipe not in FP8_RECIPES:
        raise ValueError(
            f"precision.fp8_recipe must be one of {sorted(FP8_RECIPES)}, got {precision.fp8_recipe!r}"
        )
    if precision.params_dtype not in ("bf16", "fp16"):
        raise ValueError(
            f"precision.fp8 trains with bf16 (or fp16) parameters; set precision.params_dtype=bf16 "
            f"(got {precision.params_dtype!r})"
        )
    if precision.transformer_impl == "local":
        raise ValueError("precision.fp8 needs the Transformer Engine layer spec, not transformer_impl=local")
    recipe, min_te = FP8_RECIPES[precision.fp8_recipe]
    if te_version is None:
        raise ValueError(
            "precision.fp8 needs Transformer Engine, which is not installed (pip install -e .[gpu])"
        )
    if Version(te_version) < Version(min_te):
        raise ValueError(
            f"precision.fp8_recipe={precision.fp8_recipe} needs Transformer Engine >= {min_te}, "
            f"installed {te_version}"
        )
    if precision.fp8_amax_compute_algo not in FP8_AMAX_ALGOS:
        raise ValueError(
            f"precision.fp8_amax_compute_algo must be one of {FP8_AMAX_ALGOS}, got {precision.fp8_amax_compute_algo!r}"
        )
    if precision.fp8_amax_history_len < 1:
        raise ValueError(f"precision.fp8_amax_history_len must be >= 1, got {precision.fp8_amax_history_len}")
    out: dict[str, Any] = {"fp8": precision.fp8, "fp8_recipe": recipe, "fp8_param": precision.fp8_param}
    if recipe == "delayed":  # amax history only exists for delayed scaling
        out.update(
            fp8_amax_history_len=precision.fp8_amax_history_len,
            fp8_amax_compute_algo=precision.fp8_amax_compute_algo,
        )
    return out
