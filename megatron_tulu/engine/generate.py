"""Greedy / sampled generation on the Megatron model at any TP x PP (for checks, not serving).

No KV cache: every step re-runs the prefix through Megatron's forward-only pipeline schedule, which
keeps this exact and layout-agnostic. Rollouts at scale come from vLLM (``megatron_tulu.rollout``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_tulu.engine.train_step import forward_backward
from megatron_tulu.losses.vocab_parallel import gather_vocab_logits


def _last_logits(
    model_chunks: list[torch.nn.Module], tokens: torch.Tensor, vocab_size: int
) -> torch.Tensor | None:
    """Full next-token logits [b, V] on the last pipeline stage (None on other stages)."""
    b, s = tokens.shape
    device = next(model_chunks[0].parameters()).device
    batch = {
        "tokens": tokens.to(device),
        "position_ids": torch.arange(s, device=device).unsqueeze(0).expand(b, -1),
    }

    def forward_step(data_iterator, model):
        data = next(data_iterator)
        out = model(input_ids=data["tokens"], position_ids=data["position_ids"], attention_mask=None)
        return out, None

    outputs = forward_backward(
        forward_step,
        iter([batch]),
        model_chunks,
        num_microbatches=1,
        seq_length=s,
        micro_batch_size=b,
        forward_only=True,
    )
    if not parallel_state.is_pipeline_last_stage():
        return None
    return gather_vocab_logits(outputs[0][:, -1, :], vocab_size).float()


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
    generator = torch.Generator().manual_seed(seed)
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = _last_logits(model_chunks, tokens, vocab_size)
        nxt = torch.zeros(1, dtype=torch.long)
        if logits is not None:
            if temperature <= 0:
                nxt[0] = int(logits[0].argmax())
            else:
                probs = torch.softmax(logits[0].cpu() / temperature, dim=-1)
                nxt[0] = int(torch.multinomial(probs, 1, generator=generator))
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            nxt_dev = nxt.to(next(model_chunks[0].parameters()).device)
            dist.broadcast(nxt_dev, src=last, group=pp_group)
            nxt = nxt_dev.cpu()
        token = int(nxt[0])
        new.append(token)
        tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
        if eos_token_id is not None and token == eos_token_id:
            break
    return new
