"""The "ifeval" verifier: checks every instruction of a sample, strict or loose.

Ground truth, as a dict or its JSON string, in either of two shapes:

* IFEval's `{"instruction_id_list": [...], "kwargs": [{...}, ...]}` (google-research IFEval, HF
  `google/IFEval`, open-instruct's `IFEvalVerifier`). Score: the fraction of instructions followed
  (`reward="fraction"`, default) or 1.0 only if all are followed (`reward="all"`).
* Tülu 3's released RLVR IF rows, `{"func_name": "<one of IF_FUNCTIONS>", <its arguments>, <other
  arguments: null>}` (allenai/RLVR-IFeval, RLVR-GSM-MATH-IF-Mixed-Constraints; open-instruct's
  `IFEvalVerifierOld`): one function, scored 1/0 with open-instruct's semantics on open-instruct's
  answer text (see `if_functions`); `mode` and `reward` do not apply. A function that cannot
  evaluate its input scores 0 with the reason in `details["error"]`.

Modes, as in the reference evaluation:
* strict: the instruction is checked on the response as is; an empty response follows nothing.
* loose: followed if any of 8 variants passes: the response, with its first line removed, its last
  line removed, or both, each with and without all "*" characters removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# Importing the check modules registers all 25 instruction types.
from megatron_tulu.rewards.ifeval import checks_framing, checks_structure, checks_words  # noqa: F401
from megatron_tulu.rewards.ifeval.if_functions import IF_FUNCTIONS, evaluate
from megatron_tulu.rewards.ifeval.spec import INSTRUCTIONS, validate_instruction
from megatron_tulu.rewards.ifeval.text import preload_language_profiles
from megatron_tulu.rewards.registry import InvalidGroundTruthError, register_verifier
from megatron_tulu.rewards.thinking import open_instruct_answer
from megatron_tulu.rewards.types import VerifierResult

MODES = ("strict", "loose")
REWARDS = ("fraction", "all")
_REPEAT_PROMPT = "combination:repeat_prompt"


FUNC_NAME = "func_name"


def _as_object(ground_truth: Any) -> Any:
    if isinstance(ground_truth, str):
        try:
            return json.loads(ground_truth)
        except ValueError as exc:
            raise InvalidGroundTruthError(f"ifeval ground truth is not valid JSON: {exc}") from None
    return ground_truth


def is_function_ground_truth(ground_truth: Any) -> bool:
    """Whether the ground truth is the RLVR `func_name` shape (JSON strings are parsed first)."""
    try:
        loaded = _as_object(ground_truth)
    except InvalidGroundTruthError:
        return False
    return isinstance(loaded, dict) and FUNC_NAME in loaded


def parse_function_ground_truth(ground_truth: Any) -> tuple[str, dict[str, Any]]:
    """(function name, non-null arguments) of an RLVR IF ground truth; InvalidGroundTruthError."""
    loaded = _as_object(ground_truth)
    if not isinstance(loaded, dict) or FUNC_NAME not in loaded:
        raise InvalidGroundTruthError(f"ifeval ground truth must be an object with {FUNC_NAME!r}")
    name = loaded[FUNC_NAME]
    if name not in IF_FUNCTIONS:
        raise InvalidGroundTruthError(
            f"unknown IF function {name!r}; known: {', '.join(sorted(IF_FUNCTIONS))}"
        )
    arguments = {k: v for k, v in loaded.items() if k != FUNC_NAME and v is not None}
    return name, arguments


def parse_ground_truth(ground_truth: Any) -> list[tuple[str, dict[str, Any]]]:
    """[(instruction_id, normalised kwargs), ...] of an IFEval-shape ground truth.

    Raises InvalidGroundTruthError (also for the `func_name` shape, which
    `parse_function_ground_truth` reads).
    """
    ground_truth = _as_object(ground_truth)
    if not isinstance(ground_truth, dict) or "instruction_id_list" not in ground_truth:
        raise InvalidGroundTruthError(
            "ifeval ground truth must be an object with 'instruction_id_list' (IFEval) "
            f"or {FUNC_NAME!r} (Tülu 3 RLVR)"
        )
    ids = ground_truth["instruction_id_list"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise InvalidGroundTruthError("'instruction_id_list' must be a non-empty list of strings")
    kwargs_list = ground_truth.get("kwargs")
    if kwargs_list is None:
        kwargs_list = [{}] * len(ids)
    if not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        raise InvalidGroundTruthError("'kwargs' must be a list with one object per instruction")
    return [(iid, validate_instruction(iid, kwargs)) for iid, kwargs in zip(ids, kwargs_list)]


def validate_ifeval_ground_truth(ground_truth: Any) -> None:
    if is_function_ground_truth(ground_truth):
        parse_function_ground_truth(ground_truth)
    else:
        parse_ground_truth(ground_truth)


def loose_variants(response: str) -> list[str]:
    """The reference's 8 response variants for loose evaluation (the response itself first)."""
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    variants = [response, without_first, without_last, without_both]
    return variants + [variant.replace("*", "") for variant in variants]


def _followed(check: Callable[..., bool], variants: list[str], kwargs: dict[str, Any]) -> bool:
    return any(variant.strip() and check(variant, **kwargs) for variant in variants)


def check_instructions(
    response: str, ground_truth: Any, prompt: str = "", mode: str = "strict"
) -> list[tuple[str, bool]]:
    """Per-instruction verdicts [(instruction_id, followed), ...]."""
    if mode not in MODES:
        raise ValueError(f"ifeval mode must be one of {MODES}, got {mode!r}")
    variants = [response] if mode == "strict" else loose_variants(response)
    verdicts = []
    for instruction_id, kwargs in parse_ground_truth(ground_truth):
        if instruction_id == _REPEAT_PROMPT and "prompt_to_repeat" not in kwargs:
            if not prompt.strip():
                raise InvalidGroundTruthError(
                    f"{_REPEAT_PROMPT} needs 'prompt_to_repeat' or the sample's prompt"
                )
            kwargs = {"prompt_to_repeat": prompt}
        verdicts.append((instruction_id, _followed(INSTRUCTIONS[instruction_id].check, variants, kwargs)))
    return verdicts


@register_verifier(
    "ifeval",
    aliases=("if",),
    validate=validate_ifeval_ground_truth,
    warm_up=preload_language_profiles,
)
def verify_ifeval(
    response: str, ground_truth: Any, prompt: str = "", mode: str = "strict", reward: str = "fraction"
) -> VerifierResult:
    if reward not in REWARDS:
        raise ValueError(f"ifeval reward must be one of {REWARDS}, got {reward!r}")
    if is_function_ground_truth(ground_truth):
        return _verify_function(response, ground_truth)
    verdicts = check_instructions(response, ground_truth, prompt, mode)
    followed = [ok for _, ok in verdicts]
    fraction = sum(followed) / len(followed)
    score = fraction if reward == "fraction" else float(all(followed))
    return VerifierResult(
        score,
        {
            "mode": mode,
            "instructions": [{"id": iid, "followed": ok} for iid, ok in verdicts],
            "all_followed": all(followed),
            "followed_fraction": fraction,
        },
    )


def _verify_function(response: str, ground_truth: Any) -> VerifierResult:
    """The RLVR `func_name` shape, as open-instruct's `IFEvalVerifierOld` scores it."""
    name, arguments = parse_function_ground_truth(ground_truth)
    followed, reason = evaluate(name, open_instruct_answer(response), arguments)
    details: dict[str, Any] = {"function": name, "followed": followed}
    if reason is not None:
        details["error"] = reason
    return VerifierResult(float(followed), details)
