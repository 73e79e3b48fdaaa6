"""Turn rollouts into learner tensors: prompt + response rows, targets and response masks.

Row ``i`` holds ``prompt_i + response_i`` right-padded to the step's row length: the longest row
of the whole step batch rounded up (``row_length``), so every rank (TP, PP stages, DP replicas)
uses the same shape while short responses do not pay for the configured maximum. Position ``t``
predicts token ``t+1``, so the response token at row position ``p + j`` is scored by the logits
at ``p + j - 1``: ``mask[t] = 1`` for ``t`` in ``[p - 1, p + len(response) - 1)``. Every per-token
PPO tensor (log-probs, values, rewards, advantages) uses this mask; its last valid position is the
last response token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_tulu.engine.collectives import all_reduce


@dataclass
class RolloutSample:
    prompt_ids: list[int]
    response_ids: list[int]
    finish_reason: str
    score: float  # assembled reward (alpha * verdict, or the no-EOS penalty)
    correct: float  # raw verifier score in [0, 1]
    dataset: str
    prompt_index: int
    engine_logprobs: list[float] = field(default_factory=list)  # the engine's log-prob of each response token


def row_length(samples: Sequence[RolloutSample], multiple: int, cap: int) -> int:
    """Longest ``prompt + response`` of the step batch rounded up to ``multiple`` (sequence
    parallelism needs a multiple of TP), but not past ``cap`` (the configured prompt + response
    maximum) unless a row itself is longer."""
    longest = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    return max(min(-(-longest // multiple) * multiple, cap), longest)


def build_rollout_tensors(
    samples: Sequence[RolloutSample], length: int, pad_id: int
) -> dict[str, torch.Tensor]:
    b = len(samples)
    tokens = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.float32)
    for i, s in enumerate(samples):
        seq = list(s.prompt_ids) + list(s.response_ids)
        if len(seq) > length:
            raise ValueError(f"rollout {i} has {len(seq)} tokens, more than the row length {length}")
        tokens[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(seq) - 1] = torch.tensor(seq[1:])
        p = len(s.prompt_ids)
        mask[i, p - 1 : p - 1 + len(s.response_ids)] = 1.0
    position_ids = torch.arange(length).unsqueeze(0).expand(b, -1).contiguous()
    scores = torch.tensor([s.score for s in samples], dtype=torch.float32)
    stopped = torch.tensor(
        [s.finish_reason == "stop" for s in samples], dtype=torch.bool
    )  # not cut at the limit
    out = {
        "tokens": tokens,
        "labels": labels,
        "mask": mask,
        "position_ids": position_ids,
        "scores": scores,
        "stopped": stopped,
    }
    if samples and all(len(s.engine_logprobs) == len(s.response_ids) for s in samples):
        # aligned with ``mask``: the engine's log-prob of the token each position predicts
        engine_logp = torch.zeros((b, length), dtype=torch.float32)
        for i, s in enumerate(samples):
            p = len(s.prompt_ids)
            engine_logp[i, p - 1 : p - 1 + len(s.response_ids)] = torch.tensor(s.engine_logprobs)
        out["engine_logp"] = engine_logp
    return out


def split_micro(data: dict[str, torch.Tensor], idx: Sequence[int], mbs: int) -> list[dict[str, torch.Tensor]]:
    """The rows ``idx`` of every tensor of ``data``, cut into micro-batches of ``mbs`` rows."""
    index = torch.tensor(list(idx))
    return [{k: v[index[i : i + mbs]] for k, v in data.items()} for i in range(0, len(index), mbs)]


def engine_logprob_gap(data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest and mean |engine log-prob - learner log-prob| over the batch's response tokens (all
    learner ranks). With on-policy batches both sides hold the same weights, so this measures the
    refit and the two implementations (fp32 CPU: ~1e-6); a stale (async) batch adds the update."""
    if "logp_as_engine" not in data or "engine_logp" not in data:
        return {}
    mask = data["mask"]
    gap = (data["engine_logp"] - data["logp_as_engine"]).abs() * mask
    stats = torch.tensor([float(gap.max()) if gap.numel() else 0.0, float(gap.sum()), float(mask.sum())])
    stats = torch.cat([all_reduce(stats[:1], dist.ReduceOp.MAX), all_reduce(stats[1:])])
    return {
        "rollout/engine_logprob_gap_max": float(stats[0]),
        "rollout/engine_logprob_gap_mean": float(stats[1] / stats[2].clamp(min=1)),
    }
