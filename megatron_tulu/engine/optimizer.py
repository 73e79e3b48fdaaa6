"""Megatron-Core optimizer + LR scheduler for the model chunks.

GPU: Megatron's DistributedOptimizer (optimizer state sharded over DP) unless disabled.
CPU: Megatron's plain FP32 optimizer (AdamW), or with bf16 parameters its mixed-precision one
(fp32 main copies) as on GPU, or the DistributedOptimizer when asked for
(``parallel.use_distributed_optimizer=true``; over gloo). ``cpu_compat`` answers their CUDA-only
clip assertion and type check. The global grad norm already reduces over the model-parallel group
while skipping TP-duplicated parameters, so clipping matches the single-process reference.
"""

from __future__ import annotations

import math

import torch
from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_tulu.config.schema import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine import cpu_compat

MCORE_NAMED_FIELDS = "lr min_lr weight_decay adam_beta1 adam_beta2 adam_eps clip_grad".split()


def uses_distributed_optimizer(parallel: ParallelConfig) -> bool:
    """``parallel.use_distributed_optimizer``, unset meaning: on GPU yes, on CPU no."""
    choice = parallel.use_distributed_optimizer
    return torch.cuda.is_available() if choice is None else bool(choice)


def build_optimizer(
    model_chunks: list[torch.nn.Module],
    opt: OptimizerConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
) -> MegatronOptimizer:
    config = McoreOptimizerConfig(
        optimizer="adam",
        # our optimizer fields that Megatron's config names the same
        **{name: getattr(opt, name) for name in MCORE_NAMED_FIELDS},
        bf16=precision.params_dtype == "bf16",
        fp16=precision.params_dtype == "fp16",
        params_dtype=torch.float32,
        use_distributed_optimizer=uses_distributed_optimizer(parallel),
    )
    with cpu_compat.cuda_type_names():  # bf16 / fp16 on CPU: Megatron's type check (inert on CUDA)
        return get_megatron_optimizer(config, model_chunks)


def build_scheduler(
    optimizer: MegatronOptimizer, opt: OptimizerConfig, total_steps: int
) -> OptimizerParamScheduler:
    """Linear warmup over ``warmup_ratio`` of the steps, then ``lr_decay_style`` decay to min_lr."""
    warmup = math.ceil(opt.warmup_ratio * total_steps)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup > 0 else opt.lr,
        max_lr=opt.lr,
        min_lr=opt.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(total_steps, warmup + 1),
        lr_decay_style=opt.lr_decay_style,
        start_wd=opt.weight_decay,
        end_wd=opt.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
