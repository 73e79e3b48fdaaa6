"""Greedy / sampled generation on the Megatron model at any TP x PP (for checks, not serving).

No KV cache: every step re-runs the prefix through Megatron's forward-only pipeline schedule, which
keeps this exact and layout-agnostic. Rollouts at scale come from vLLM (``megatron_tulu.rollout``).
"""

from __future__ import annotations

import torch

from megatron_tulu.engine.train_step import forward_only_collect
from megatron_tulu.losses.vocab_parallel import gather_vocab_logits


def _last_logits(model_chunks: list[torch.nn.Module], tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full next-token logits [b, V] (fp32, CPU), on every rank of the pipeline."""
    b, s = tokens.shape
    batch = {"tokens": tokens, "position_ids": torch.arange(s).unsqueeze(0).expand(b, -1)}

    def last_position(output: torch.Tensor, _batch) -> dict[str, torch.Tensor]:
        return {"logits": gather_vocab_logits(output[:, -1, :], vocab_size).float()}

    return forward_only_collect(model_chunks, [batch], last_position, micro_batch_size=b)["logits"]


@torch.no_grad()
def generate(
    model_chunks: list[torch.nn.Module],
    prompt_ids: list[int],
    vocab_size: int,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> list[int]:
    """Continue ``prompt_ids``; temperature 0 is greedy. Same result on every rank."""
    for chunk in model_chunks:
        chunk.eval()
    tokens = torch.tensor([prompt_ids], dtype=torch.long)
    # every rank holds the same logits and the same generator, so every rank picks the same token
    generator = torch.Generator().manual_seed(seed)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = _last_logits(model_chunks, tokens, vocab_size)
        if temperature <= 0:
            token = int(logits[0].argmax())
        else:
            probs = torch.softmax(logits[0] / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        nxt = torch.tensor([[token]], dtype=torch.long)
        new.append(token)
        tokens = torch.cat([tokens, nxt], dim=1)
        if eos_token_id is not None and token == eos_token_id:
            break
    return new
