"""Causal-LM token losses as pure tensor functions."""

from __future__ import annotations

import torch


def masked_token_loss(
    per_token_loss: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the masked per-token losses, number of label tokens).

    ``per_token_loss`` is Megatron's vocab-parallel cross entropy ``[b, s]``; ``loss_mask`` is 1 on
    tokens that carry a label. Returning the sum (not the mean) lets the engine normalise once over
    the global batch.
    """
    mask = loss_mask.to(per_token_loss.dtype)
    return (per_token_loss.float() * mask.float()).sum(), loss_mask.sum().to(torch.int)
