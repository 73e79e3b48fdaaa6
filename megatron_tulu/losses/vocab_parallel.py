"""Token log-probabilities from vocab-parallel logits, without gathering the vocabulary.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary. Megatron pads the
vocabulary with rows that are not real tokens; their logits are masked to -inf here so that the
softmax matches the unpadded HF model exactly, whatever the TP size (and so whatever the padding).
The only cross-rank operations are two all-reduces over the TP group (max, sum of exp) and one for
the target logit; all are differentiable through Megatron's region mappings.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region


def _tp_world_and_rank() -> tuple[int, int]:
    if not parallel_state.model_parallel_is_initialized():
        return 1, 0
    return (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_rank(),
    )


def _reduce(t: torch.Tensor) -> torch.Tensor:
    world, _ = _tp_world_and_rank()
    return reduce_from_tensor_model_parallel_region(t) if world > 1 else t


def _masked_local_logits(
    logits: torch.Tensor, vocab_size: int, temperature: float
) -> tuple[torch.Tensor, int]:
    world, rank = _tp_world_and_rank()
    local_vocab = logits.shape[-1]
    start = rank * local_vocab
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    valid = vocab_size - start
    if valid < local_vocab:
        cols = torch.arange(local_vocab, device=logits.device)
        logits = logits.masked_fill(cols >= max(valid, 0), float("-inf"))
    return logits, start


def _global_max(logits: torch.Tensor) -> torch.Tensor:
    local_max = logits.detach().max(dim=-1).values
    world, _ = _tp_world_and_rank()
    if world > 1:
        torch.distributed.all_reduce(
            local_max,
            op=torch.distributed.ReduceOp.MAX,
            group=parallel_state.get_tensor_model_parallel_group(),
        )
    return local_max


def vocab_parallel_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, temperature: float = 1.0
) -> torch.Tensor:
    """log p(target) per position. ``logits`` [..., V_local]; ``targets`` [...] global token ids."""
    logits, start = _masked_local_logits(logits, vocab_size, temperature)
    gmax = _global_max(logits)
    shifted = logits - gmax.unsqueeze(-1)
    sum_exp = _reduce(shifted.exp().sum(dim=-1))
    local_vocab = logits.shape[-1]
    in_range = (targets >= start) & (targets < start + local_vocab)
    local_idx = (targets - start).clamp(0, local_vocab - 1)
    target_logit = shifted.gather(-1, local_idx.unsqueeze(-1)).squeeze(-1)
    target_logit = _reduce(torch.where(in_range, target_logit, torch.zeros_like(target_logit)))
    return target_logit - sum_exp.log()


def vocab_parallel_entropy(logits: torch.Tensor, vocab_size: int, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the softmax per position (no gradient), from vocab-parallel logits."""
    with torch.no_grad():
        logits, _ = _masked_local_logits(logits, vocab_size, temperature)
        gmax = _global_max(logits)
        shifted = logits - gmax.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = _reduce(exp.sum(dim=-1))
        finite = torch.where(torch.isfinite(shifted), shifted, torch.zeros_like(shifted))
        weighted = _reduce((exp * finite).sum(dim=-1))
        return sum_exp.log() - weighted / sum_exp


def gather_vocab_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full (unpadded) logits on every TP rank, for generation and checks only."""
    world, _ = _tp_world_and_rank()
    if world > 1:
        parts = [torch.empty_like(logits) for _ in range(world)]
        torch.distributed.all_gather(
            parts, logits.contiguous(), group=parallel_state.get_tensor_model_parallel_group()
        )
        logits = torch.cat(parts, dim=-1)
    return logits[..., :vocab_size]
