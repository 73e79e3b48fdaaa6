"""Verifiable rewards for Tülu 3 RLVR: GSM8K, MATH ("flex") and IFEval verifiers.

Typical use in an RLVR trainer::

    from megatron_tulu.rewards import compute_rewards

    results = compute_rewards(
        [{"response": text, "ground_truth": gt, "dataset": "gsm8k", "finish_reason": "stop"}, ...],
        alpha=10.0, no_eos_penalty=-10.0,
    )
    rewards = [r.reward for r in results]

Every verifier call runs in a forked worker process under a hard per-item time limit
(`time_limit`, default 5 s), so hostile model output can never stall training. New datasets are
added with `@register_verifier("name")` (see `megatron_tulu.rewards.registry`).

Options: `strip_thinking=True` verifies only the answer of a reasoning response
(`megatron_tulu.rewards.thinking`); per-verifier options go in `verifier_options`, e.g.
`{"gsm8k": {"rule": "open-instruct"}, "ifeval": {"mode": "loose"}}`. The `ifeval` verifier also
reads Tülu 3's RLVR `func_name` ground truths (`megatron_tulu.rewards.ifeval.if_functions`).
"""

from megatron_tulu.rewards.assembly import (
    DEFAULT_ALPHA,
    DEFAULT_NO_EOS_PENALTY,
    DEFAULT_TIME_LIMIT_S,
    compute_rewards,
    score_sample,
    stopped_at_eos,
    verify_sample,
)
from megatron_tulu.rewards.registry import (
    InvalidGroundTruthError,
    UnknownDatasetError,
    get_verifier,
    register_verifier,
    registered_datasets,
    unregister_verifier,
)
from megatron_tulu.rewards.types import RewardResult, VerifierResult

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_NO_EOS_PENALTY",
    "DEFAULT_TIME_LIMIT_S",
    "InvalidGroundTruthError",
    "RewardResult",
    "UnknownDatasetError",
    "VerifierResult",
    "compute_rewards",
    "get_verifier",
    "register_verifier",
    "registered_datasets",
    "score_sample",
    "stopped_at_eos",
    "unregister_verifier",
    "verify_sample",
]
