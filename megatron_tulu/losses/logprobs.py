"""Per-sequence response log-probs from vocab-parallel logits."""

from __future__ import annotations

import torch

from megatron_tulu.losses.vocab_parallel import vocab_parallel_log_probs


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    vocab_size: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked target log-probs [b], number of masked targets [b]).

    ``labels`` are next-token targets (IGNORE = -100 where ``loss_mask`` is 0); the full vocabulary is
    never gathered: each TP rank contributes its slice through ``vocab_parallel_log_probs``.
    """
    token_logps = vocab_parallel_log_probs(logits, labels.clamp(min=0), vocab_size, temperature)
    mask = loss_mask.to(token_logps.dtype)
    return (token_logps * mask).sum(-1), mask.sum(-1)
