"""Token log-probabilities from vocab-parallel logits, without gathering the vocabulary.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary. Megatron pads the
vocabulary with rows that are not real tokens; their logits are masked to -inf here so that the
softmax matches the unpadded HF model exactly, whatever the TP size (and so whatever the padding).
The only cross-rank operations are two all-reduces over the TP group (max, sum of exp) and one for
the target logit; all are differentiable through Megatron's region mappings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import (
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
)

from megatron_tulu.kernels import fused_vocab_parallel_log_probs


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


# ------------------------------------------------------------------------------------------------
# Fused head: log-probs straight from the last stage's hidden states (megatron_tulu.kernels)
# ------------------------------------------------------------------------------------------------


def _gpt(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DDP / Float16Module wrappers
        model = model.module
    return model


def gpt_hidden_states(model: torch.nn.Module, **forward_kwargs: Any) -> torch.Tensor:
    """Run a ``GPTModel`` chunk but stop before its output layer: final-norm hidden states [s, b, h].

    ``GPTModel._postprocess`` returns the decoder output unchanged when ``post_process`` is
    False (that is how non-last pipeline stages work), and the decoder's own final norm is fixed
    at construction, so clearing the public ``post_process`` attribute for the duration of one
    forward yields exactly the tensor the output layer would have multiplied. Under sequence
    parallelism the result is this rank's sequence shard (see :func:`forward_head`).
    """
    gpt = _gpt(model)
    if not gpt.post_process:
        raise ValueError("gpt_hidden_states: this chunk is not the last pipeline stage")
    gpt.post_process = False
    try:
        return model(**forward_kwargs)
    finally:
        gpt.post_process = True


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """This TP rank's [V_local, h] rows of the (padded) output weight, tied or not."""
    gpt = _gpt(model)
    if gpt.share_embeddings_and_output_weights:
        return gpt.shared_embedding_or_output_weight()
    return gpt.output_layer.weight


@dataclass(frozen=True)
class TokenHead:
    """What the last pipeline stage hands its loss function: token log-probs on request.

    It holds either this rank's vocab-parallel logits (the output layer ran: the unfused path) or
    the final hidden states and this rank's output-weight rows (fused: the logits are never
    materialised; ``megatron_tulu.kernels`` computes log-probs chunk by chunk and recomputes them
    in backward). Both give the same values and gradients (fp32: rel 1e-5 at TP1, TP2, PP2,
    packed rows, temperature != 1, tested); loss functions call :meth:`log_probs` and never know
    which it is.
    """

    vocab_size: int
    logits: torch.Tensor | None = None  # [b, s, V_local]
    hidden: torch.Tensor | None = None  # [b, s, h], the output weight's dtype
    weight: torch.Tensor | None = None  # [V_local, h]
    sequence_parallel: bool = False  # hidden was gathered from the sequence-parallel region

    @property
    def fused(self) -> bool:
        return self.logits is None

    def log_probs(
        self, labels: torch.Tensor, temperature: float = 1.0, *, with_entropy: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """fp32 log p(label) per position (labels [b, s] global ids; negative ignore labels read as
        token 0: mask them), and the softmax entropy when ``with_entropy``."""
        labels = labels.clamp(min=0)
        if self.logits is not None:
            logp = vocab_parallel_log_probs(self.logits, labels, self.vocab_size, temperature)
            if not with_entropy:
                return logp
            return logp, vocab_parallel_entropy(self.logits, self.vocab_size, temperature)
        return fused_vocab_parallel_log_probs(
            self.hidden,
            self.weight,
            labels,
            self.vocab_size,
            temperature=temperature,
            with_entropy=with_entropy,
            # the sequence-parallel gather already reduce-scatters the hidden-state gradient
            reduce_hidden_grad=not self.sequence_parallel,
        )

    def reshaped(self, *lead: int) -> TokenHead:
        """The same head with its token dims viewed as ``lead`` (packed THD [1, b*s] -> [b, s])."""
        if self.logits is not None:
            return replace(self, logits=self.logits.reshape(*lead, self.logits.shape[-1]))
        return replace(self, hidden=self.hidden.reshape(*lead, self.hidden.shape[-1]))

    @staticmethod
    def cat(heads: list[TokenHead]) -> TokenHead:
        """Heads of separate forwards (DPO's chosen and rejected) stacked on the batch dim."""
        first = heads[0]
        if first.logits is not None:
            return replace(first, logits=torch.cat([h.logits for h in heads]))
        return replace(first, hidden=torch.cat([h.hidden for h in heads]))


def forward_head(
    model: torch.nn.Module, *, vocab_size: int, fused: bool, **forward_kwargs: Any
) -> torch.Tensor | TokenHead:
    """One forward of a GPTModel chunk for a trainer's ``forward_step``, fused or not.

    On the last pipeline stage returns a :class:`TokenHead`; on earlier stages the chunk's output
    tensor, which Megatron's schedule sends on. ``fused=True`` stops before the output layer
    (:func:`gpt_hidden_states`) and keeps its weight; ``fused=False`` runs it.
    """
    gpt = _gpt(model)
    if not gpt.post_process:
        return model(**forward_kwargs)
    if not fused:
        return TokenHead(vocab_size, logits=model(**forward_kwargs))
    hidden = gpt_hidden_states(model, **forward_kwargs)
    sequence_parallel = bool(getattr(gpt.output_layer, "sequence_parallel", False))
    if sequence_parallel:
        # what the output layer would do: all-gather the sequence, reduce-scatter its gradient
        hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
    weight = output_weight(model)
    # Float16Module hands the last stage's output back in fp32; the output layer would have
    # multiplied the bf16/fp16 tensor, so go back to it (exact: the values came from it)
    return TokenHead(
        vocab_size,
        hidden=hidden.transpose(0, 1).to(weight.dtype),
        weight=weight,
        sequence_parallel=sequence_parallel,
    )
