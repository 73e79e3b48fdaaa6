"""Per-sequence response log-probs from per-token log-probs."""

from __future__ import annotations

import torch


def sequence_logps(token_logps: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked target log-probs [b], number of masked targets [b]) from ``token_logps``
    [b, s] (a :class:`~megatron_tulu.losses.vocab_parallel.TokenHead`'s ``log_probs``)."""
    mask = loss_mask.to(token_logps.dtype)
    return (token_logps * mask).sum(-1), mask.sum(-1)
