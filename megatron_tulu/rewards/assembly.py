"""Tülu 3 RLVR reward assembly: `reward = alpha * score`, or the no-EOS penalty.

Tülu 3 (§6, Eq. 8) gives `alpha = 10` for a verified response and 0 otherwise, and replaces the
reward by -10 when the response did not end with EOS (Tab. 21 "no-EOS penalty"). Here the
verifier still runs on truncated responses so that accuracy reports stay complete, but the
reward is the penalty.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from megatron_tulu.rewards.registry import get_verifier, registry_generation
from megatron_tulu.rewards.sandbox import (
    SandboxCrash,
    SandboxTaskError,
    SandboxTimeout,
    run_with_time_limit,
)
from megatron_tulu.rewards.thinking import strip_thinking as answer_part
from megatron_tulu.rewards.types import RewardResult, VerifierResult

DEFAULT_ALPHA = 10.0
DEFAULT_NO_EOS_PENALTY = -10.0
DEFAULT_TIME_LIMIT_S = 5.0

# vLLM reports "stop" both for EOS and for a user stop string; our generation engine only stops
# early at EOS, so "stop" means EOS. "eos" is accepted for engines that say so explicitly.
# A missing finish reason is taken as a normal stop (e.g. rows scored offline without one).
EOS_FINISH_REASONS = frozenset({"stop", "eos", "eos_token"})


def stopped_at_eos(finish_reason: str | None) -> bool:
    return finish_reason is None or finish_reason.strip().lower() in EOS_FINISH_REASONS


def _call_registered(
    dataset: str, response: str, ground_truth: Any, prompt: str, options: Mapping[str, Any]
) -> VerifierResult:
    # Module-level so the sandbox can pickle it by reference; the worker resolves `dataset`
    # in its own (forked, hence identical) registry.
    result = get_verifier(dataset).fn(response, ground_truth, prompt, **options)
    if not isinstance(result, VerifierResult):
        raise TypeError(f"verifier for {dataset!r} returned {type(result).__name__}, not VerifierResult")
    return result


def verify_sample(
    response: str,
    ground_truth: Any,
    dataset: str,
    prompt: str = "",
    *,
    time_limit: float | None = DEFAULT_TIME_LIMIT_S,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
    strip_thinking: bool = False,
) -> VerifierResult:
    """Run the dataset's verifier under the hard time limit. Never raises for bad model output.

    A timeout, a crash of the worker or an exception inside the verifier scores 0 with the cause
    in `details["error"]`. Unknown datasets raise UnknownDatasetError (a data bug, not model output).
    `strip_thinking` verifies only the answer part of a reasoning response (`thinking.strip_thinking`:
    after the last `</think>`, inside the last `<answer>…</answer>`; nothing if `<think>` never closes).
    """
    verifier = get_verifier(dataset)
    options = dict((verifier_options or {}).get(verifier.name, {}))
    if strip_thinking:
        response = answer_part(response)
    try:
        result = run_with_time_limit(
            _call_registered,
            (verifier.name, response, ground_truth, prompt, options),
            time_limit=time_limit,
            generation=registry_generation(),
        )
    except SandboxTimeout:
        return VerifierResult(0.0, {"error": "timeout", "time_limit_s": time_limit})
    except SandboxCrash as exc:
        return VerifierResult(0.0, {"error": f"verifier process crashed: {exc}"})
    except SandboxTaskError as exc:
        return VerifierResult(0.0, {"error": str(exc)})
    except Exception as exc:  # inline mode (time_limit=None): same contract as the sandbox
        return VerifierResult(0.0, {"error": f"{type(exc).__name__}: {exc}"})
    return VerifierResult(max(0.0, min(1.0, float(result.score))), dict(result.details))


def score_sample(
    response: str,
    ground_truth: Any,
    dataset: str,
    prompt: str = "",
    finish_reason: str | None = "stop",
    *,
    alpha: float = DEFAULT_ALPHA,
    no_eos_penalty: float = DEFAULT_NO_EOS_PENALTY,
    time_limit: float | None = DEFAULT_TIME_LIMIT_S,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
    strip_thinking: bool = False,
) -> RewardResult:
    """Verify one response and turn the verdict into the RLVR reward."""
    verdict = verify_sample(
        response,
        ground_truth,
        dataset,
        prompt,
        time_limit=time_limit,
        verifier_options=verifier_options,
        strip_thinking=strip_thinking,
    )
    eos = stopped_at_eos(finish_reason)
    reward = alpha * verdict.score if eos else no_eos_penalty
    return RewardResult(
        reward=reward,
        score=verdict.score,
        dataset=get_verifier(dataset).name,
        stopped_at_eos=eos,
        details=verdict.details,
    )


_executors: dict[tuple[int, int], ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    # Reused across calls: each pool thread keeps its forked verifier worker alive, so a trainer
    # calling compute_rewards every step does not fork new processes every step.
    key = (os.getpid(), workers)
    with _executors_lock:
        if key not in _executors:
            _executors[key] = ThreadPoolExecutor(workers, thread_name_prefix="reward-verifier")
        return _executors[key]


def warm_up(datasets: Iterable[str]) -> None:
    """Load heavy verifier state once in this process, before workers fork from it."""
    for name in {get_verifier(d).name for d in datasets}:
        hook = get_verifier(name).warm_up
        if hook is not None:
            hook()


def compute_rewards(
    samples: Sequence[Mapping[str, Any]],
    *,
    alpha: float = DEFAULT_ALPHA,
    no_eos_penalty: float = DEFAULT_NO_EOS_PENALTY,
    workers: int | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT_S,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
    on_done: Callable[[int], None] | None = None,
    strip_thinking: bool = False,
) -> list[RewardResult]:
    """Score a batch of samples `{response, ground_truth, dataset, prompt?, finish_reason?}`.

    Runs on `workers` cores (default: all): each of `workers` threads drives its own forked worker
    process, so verification runs in parallel outside the GIL and every item gets its own hard time
    limit. Results are in input order. `on_done(i)` is called as item `i` finishes (progress bars).
    Unknown datasets raise UnknownDatasetError before any work starts. `strip_thinking`: see
    `verify_sample` (off by default, as in Tülu 3, whose models do not think aloud).
    """
    for sample in samples:
        get_verifier(sample["dataset"])
    warm_up(sample["dataset"] for sample in samples)

    def score(index: int) -> RewardResult:
        sample = samples[index]
        result = score_sample(
            sample["response"],
            sample["ground_truth"],
            sample["dataset"],
            sample.get("prompt") or "",
            sample.get("finish_reason", "stop"),
            alpha=alpha,
            no_eos_penalty=no_eos_penalty,
            time_limit=time_limit,
            verifier_options=verifier_options,
            strip_thinking=strip_thinking,
        )
        if on_done is not None:
            on_done(index)
        return result

    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or len(samples) <= 1:
        return [score(i) for i in range(len(samples))]
    return list(_executor(workers).map(score, range(len(samples))))
