"""Build the Llama-architecture Megatron-Core ``GPTModel`` for this rank's pipeline stage(s)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_tulu.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.config.transformer import padded_vocab_size, to_transformer_config
from megatron_tulu.engine.optimizer import uses_distributed_optimizer


def transformer_engine_usable() -> bool:
    """TE's layers need both the package and a CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def select_layer_spec(precision: PrecisionConfig) -> tuple[ModuleSpec, str]:
    """TE spec when TE is importable with CUDA (or asked for), the local spec otherwise."""
    impl = precision.transformer_impl
    if impl == "auto":
        impl = "transformer_engine" if transformer_engine_usable() else "local"
    if impl == "transformer_engine":
        if not transformer_engine_usable():
            raise RuntimeError(
                "precision.transformer_impl=transformer_engine needs CUDA and transformer_engine"
            )
        return get_gpt_layer_with_transformer_engine_spec(), impl
    if impl != "local":
        raise ValueError(f"precision.transformer_impl must be auto|local|transformer_engine, got {impl!r}")
    if precision.fp8 is not None:
        raise ValueError("precision.fp8 needs the Transformer Engine layer spec")
    return get_gpt_layer_local_spec(normalization="RMSNorm"), impl


def build_gpt_chunk(
    model_cfg: ModelConfig, tcfg: TransformerConfig, spec: ModuleSpec, tp: int, vp_stage: int | None = None
) -> GPTModel:
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(model_cfg, tp),
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=pre,
        post_process=post,
        parallel_output=True,
        share_embeddings_and_output_weights=model_cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(model_cfg.rotary_base),
        rope_scaling=model_cfg.rope_scaling,
        rope_scaling_factor=model_cfg.rope_scaling_factor,
        vp_stage=vp_stage,
    )
    # Every parameter in the training dtype, as Megatron's Float16Module leaves a bf16 / fp16 model:
    # the local spec's torch norms (no Apex) are built in fp32 whatever params_dtype says, and
    # Megatron's non-distributed mixed-precision optimizer cannot checkpoint a model holding both.
    for param in model.parameters():
        if param.dtype != tcfg.params_dtype:
            param.data = param.data.to(tcfg.params_dtype)
    return model


def build_model(
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    *,
    wrap_ddp: bool = True,
) -> list[torch.nn.Module]:
    """Return this rank's model chunks (one per virtual pipeline stage), DDP-wrapped for training.

    Gradients accumulate in fp32 buffers (``main_grad``); the DP all-reduce sums (per-token loss
    style) and ``finalize_model_grads`` divides by the global loss denominator.
    """
    on_cuda = torch.cuda.is_available()
    tcfg = to_transformer_config(model_cfg, parallel, precision, on_cuda=on_cuda)
    spec, _ = select_layer_spec(precision)
    stages = parallel.vpp or 1
    chunks: list[torch.nn.Module] = []
    for vp in range(stages):
        chunk = build_gpt_chunk(model_cfg, tcfg, spec, parallel.tp, vp if parallel.vpp else None)
        if on_cuda:
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    if not wrap_ddp:
        return chunks
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=uses_distributed_optimizer(parallel),
    )
    return [
        DistributedDataParallel(
            config=tcfg,
            ddp_config=ddp_cfg,
            module=chunk,
            disable_bucketing=i > 0,  # Megatron's convention for interleaved chunks
        )
        for i, chunk in enumerate(chunks)
    ]


def unwrap(module: torch.nn.Module) -> GPTModel:
    while hasattr(module, "module"):
        module = module.module
    return module
