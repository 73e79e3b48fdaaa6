"""One optimizer step through Megatron-Core's pipeline schedules.

Loss functions follow Megatron's per-token contract: ``loss_func(output) -> (numerator, denominator,
metrics)``. Gradients are summed over micro-batches and DP ranks and divided once by the global
denominator in ``finalize_model_grads``: the result does not depend on how a global batch is split.
For Tülu's SFT sum loss the denominator is the number of sequences; for token-mean it is the
number of label tokens; for DPO the number of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

ForwardStep = Callable[[Iterator[Any], torch.nn.Module], tuple[torch.Tensor, Callable]]


@dataclass
class StepResult:
    metrics: dict[str, float] = field(default_factory=dict)
    grad_norm: float | None = None
    lr: float = 0.0
    skipped: bool = False


def prepare_model_for_training(
    model_chunks: list[torch.nn.Module], optimizer: MegatronOptimizer | None
) -> None:
    config = get_model_config(model_chunks[0])
    config.finalize_model_grads_func = finalize_model_grads
    if optimizer is not None and config.fp16:
        config.grad_scale_func = optimizer.scale_loss


def reduce_metrics(per_microbatch: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Sum each metric over micro-batches and DP ranks; every rank gets the last stage's values.

    Metrics are (value_sum, count) pairs packed as 2-element tensors so means stay exact under any
    split; plain scalars are summed.
    """
    keys = sorted(per_microbatch[0]) if per_microbatch else []
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    # Agree on the metric names: only the last stage has them.
    names = [keys]
    dist.broadcast_object_list(names, src=last, group=pp_group)
    keys = names[0]
    if not keys:
        return {}
    # NCCL reduces only device tensors
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    stacked = torch.zeros(len(keys), 2, dtype=torch.float64, device=device)
    for md in per_microbatch:
        for i, k in enumerate(keys):
            v = md[k].detach().double().to(stacked.device).reshape(-1)
            stacked[i, 0] += v[0]
            stacked[i, 1] += v[1] if v.numel() > 1 else 1.0
    dist.all_reduce(stacked, group=parallel_state.get_data_parallel_group())
    dist.broadcast(stacked, src=last, group=pp_group)
    return {k: (stacked[i, 0] / stacked[i, 1].clamp(min=1e-12)).item() for i, k in enumerate(keys)}


def forward_backward(
    forward_step: ForwardStep,
    data_iterator: Iterator[Any] | list[Iterator[Any]],
    model_chunks: list[torch.nn.Module],
    *,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Run Megatron's schedule (no-pipelining, 1F1B, or interleaved) over the micro-batches."""
    schedule = get_forward_backward_func()
    return schedule(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def train_step(
    forward_step: ForwardStep,
    data_iterator: Iterator[Any] | list[Iterator[Any]],
    model_chunks: list[torch.nn.Module],
    optimizer: MegatronOptimizer,
    scheduler: OptimizerParamScheduler | None,
    *,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
) -> StepResult:
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    per_mb = forward_backward(
        forward_step,
        data_iterator,
        model_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
    )
    lr = float(optimizer.param_groups[0]["lr"])  # the rate this step uses (the scheduler moves it after)
    ok, grad_norm, _ = optimizer.step()
    if scheduler is not None and ok:
        scheduler.step(increment=1)
    return StepResult(
        metrics=reduce_metrics(per_mb),
        grad_norm=None if grad_norm is None else float(grad_norm),
        lr=lr,
        skipped=not ok,
    )
