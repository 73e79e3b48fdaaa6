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

from megatron_tulu.losses.vocab_parallel import forward_head

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


def collective_device() -> torch.device | None:
    """Where a tensor must be for a collective: the current GPU (NCCL reduces device tensors
    only), or None on CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None


def batch_seq_length(batch: dict[str, Any]) -> int:
    """Sequence length of a micro-batch: the longest of its ``*tokens`` tensors (DPO's separate
    mode carries ``chosen_tokens`` and ``rejected_tokens``)."""
    return max(int(v.shape[-1]) for k, v in batch.items() if k.endswith("tokens"))


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
    stacked = torch.zeros(len(keys), 2, dtype=torch.float64, device=collective_device())
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


def batch_to_device(batch: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Move a micro-batch's tensors to the device of ``model``'s parameters."""
    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward_batch(
    model: torch.nn.Module,
    batch: dict[str, Any],
    *,
    prefix: str = "",
    inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    vocab_size: int | None = None,
    fused: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The one "batch to device, then the GPTModel forward" of every trainer and check.

    By default ``{prefix}tokens`` and ``{prefix}position_ids`` go in (the causal mask is built by
    the model); ``inputs(batch on device) -> GPTModel kwargs`` replaces that (packed rows: a
    block-causal mask or THD ``packed_seq_params``). Returns ``(output, batch on the model's
    device)``. With ``vocab_size`` the last pipeline stage's output is a
    :class:`~megatron_tulu.losses.vocab_parallel.TokenHead` (log-probs on request; ``fused``:
    without materialising the logits); without it the model's own output (logits, or a critic's
    values). Earlier stages return their hidden states either way.
    """
    batch = batch_to_device(batch, model)
    if inputs is not None:
        kwargs = inputs(batch)
    else:
        kwargs = {
            "input_ids": batch[f"{prefix}tokens"],
            "position_ids": batch[f"{prefix}position_ids"],
            "attention_mask": None,
        }
    if vocab_size is None:
        return model(**kwargs), batch
    return forward_head(model, vocab_size=vocab_size, fused=fused, **kwargs), batch


Forward = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


def forward_only_collect(
    model_chunks: list[torch.nn.Module],
    micro_batches: list[dict[str, Any]],
    fn: Callable[[torch.Tensor, dict[str, Any]], dict[str, torch.Tensor]],
    micro_batch_size: int,
    *,
    forward: Forward = forward_batch,
) -> dict[str, torch.Tensor] | None:
    """The one forward-only pass that collects results across pipeline stages.

    ``forward(model, batch) -> (output, batch on device)`` runs on every stage (default
    :func:`forward_batch`); ``fn(output, batch) -> {name: tensor [b, ...]}`` runs on the last
    stage. The tensors, concatenated over micro-batches, are returned on CPU on every rank of the
    pipeline (broadcast from the last stage); ``None`` when there are no micro-batches.
    ``micro_batch_size`` is the batch rows of the activation a stage sends.
    """

    def step(data_iterator, model):
        out, batch = forward(model, next(data_iterator))

        def loss_func(output):
            detached = {k: v.detach().cpu() for k, v in fn(output, batch).items()}
            device = next(model.parameters()).device
            return torch.zeros((), device=device), torch.tensor(1, dtype=torch.int), detached

        return out, loss_func

    if not micro_batches:
        return None
    modes = [chunk.training for chunk in model_chunks]
    for chunk in model_chunks:
        chunk.eval()
    try:
        with torch.no_grad():
            outs = forward_backward(
                step,
                iter(micro_batches),
                model_chunks,
                num_microbatches=len(micro_batches),
                seq_length=batch_seq_length(micro_batches[0]),
                micro_batch_size=micro_batch_size,
                forward_only=True,
            )
    finally:
        for chunk, mode in zip(model_chunks, modes):
            chunk.train(mode)
    result = {k: torch.cat([o[k] for o in outs]) for k in outs[0]} if outs else None
    holder = [result]
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast_object_list(
            holder,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    return holder[0]
