"""IFEval checks on how the response is framed: start, end, quotes, repeated prompt, two answers.

Semantics follow the reference checkers (google-research `instruction_following_eval`, as shipped
in lm-eval).
"""

from __future__ import annotations

from typing import Any

from megatron_tulu.rewards.ifeval.spec import get_str, instruction


@instruction("combination:two_responses")
def two_responses(response: str) -> bool:
    # Exactly two different non-empty answers separated by "******"; empty pieces only at the ends.
    answers = []
    pieces = response.split("******")
    for index, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece.strip())
        elif index not in (0, len(pieces) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


def _repeat(kwargs: dict[str, Any]) -> dict[str, Any]:
    # The prompt may come from the sample instead (see verifier.py); validated there.
    if "prompt_to_repeat" in kwargs:
        return {"prompt_to_repeat": get_str(kwargs, "prompt_to_repeat")}
    return {}


@instruction("combination:repeat_prompt", _repeat)
def repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"end_phrase": get_str(kwargs, "end_phrase")}


@instruction("startend:end_checker", _end)
def end_checker(response: str, end_phrase: str) -> bool:
    # Case-insensitive; surrounding whitespace and double quotes around the response are ignored.
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@instruction("startend:quotation")
def quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'
