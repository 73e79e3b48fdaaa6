"""MATH "flex" verifier (Tülu 3 RLVR, open-instruct `verify_math_sample`).

Candidates come from `math_extract.extract_candidates` (last boxed, Minerva line, last `$...$`,
raw text). A candidate is correct if either

* `math_verify.verify(parse(gold), parse(candidate))` holds (symbolic/numeric equivalence; this
  replaces the reference's hand-rolled `sympy.simplify(a - b) == 0`), or
* the Hendrycks-normalised strings are equal (the reference's `hendrycks_is_equiv`).

math-verify sees each candidate *before* Minerva normalisation (which mangles valid LaTeX, e.g.
`\\left(` loses "ft" as a unit); the string check uses the normalised form as the reference does.
Where the response boxes several answers, the last box counts (Tülu), whereas math-verify alone
would merge all boxes into a set.

Raw-text rule (no `\\boxed{}`, no Minerva line, no `$...$` span): the *whole* response is the
answer, as in open-instruct's flex verifier, whose last resort compares
`normalize_final_answer(response)` with the gold. Minerva normalisation removes spaces, units and
filler words and keeps what follows the last "=", so "5", "5 cm" and "x = 5" are the answer 5,
while "I think it is 3 or maybe 5" (normalised "Ithinkitis3ormaybe5") and "1 2 3 4 5 6 7 8 9 10"
("12345678910") are not 5 or 10: a number inside prose never counts. (Until 2026-11 the last
plain number of the text was taken, which let such responses collect the reward.) Responses whose
normalised form is longer than `RAW_MAX_CHARS` are compared as strings only.

Safety: only math-verify's LaTeX extraction is used. Its plain-expression extraction goes through
`sympy.parse_expr`, which calls `eval`, so it is never enabled. Undefined values never count as
correct: a prediction that evaluates to `zoo`/`nan` (e.g. `\\frac{1}{0}`) scores 0 by either
comparison, and so does every prediction for a gold that is itself undefined (a gold of
`\\frac{1}{0}` has no correct answer, not even `\\frac{1}{0}`). The call runs under the hard time limit of
`megatron_tulu.rewards.sandbox`; math-verify's own signal-based limits are used in addition when
running on a main thread (always the case inside the sandbox worker).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from megatron_tulu.rewards.math_extract import Candidate, extract_candidates
from megatron_tulu.rewards.math_normalize import hendrycks_normalize
from megatron_tulu.rewards.registry import InvalidGroundTruthError, register_verifier
from megatron_tulu.rewards.types import VerifierResult

# math-verify logs every internal timeout/failed parse as a warning; with hostile model output
# that is noise, and the verdict is reported in the result details anyway.
logging.getLogger("math_verify").setLevel(logging.ERROR)

INNER_TIMEOUT_S = 2  # math-verify's per-parse / per-comparison limit (whole seconds, signal-based)
RAW_MAX_CHARS = 1000  # raw-text answers longer than this (normalised) are not parsed as LaTeX
_DETAIL_CHARS = 200


def _inner_timeout() -> int | None:
    return INNER_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0


def _parse_latex(text: str) -> list[Any]:
    from math_verify import LatexExtractionConfig, parse

    return parse(text, extraction_config=[LatexExtractionConfig()], parsing_timeout=_inner_timeout())


def _parse_answer(answer: str) -> list[Any]:
    """Parse an already-extracted answer (gold or candidate) as LaTeX."""
    if "\\boxed" in answer or "$" in answer:
        return _parse_latex(answer)
    if _balanced(answer):
        return _parse_latex("\\boxed{" + answer + "}")
    return _parse_latex("$" + answer + "$")


def _undefined(values: list[Any]) -> bool:
    """Whether a parse holds an undefined value (`zoo`, `nan`): such answers are never correct.

    math-verify returns [sympy value, source string]; dropping only the sympy value would let the
    string of `\\frac{1}{0}` still match, so the whole parse is discarded.
    """
    import sympy

    return any(isinstance(value, sympy.Basic) and value.has(sympy.zoo, sympy.nan) for value in values)


def _defined(values: list[Any]) -> list[Any]:
    return [] if _undefined(values) else values


def _math_verify_equal(gold: list[Any], candidate: Candidate, response: str) -> bool:
    from math_verify import verify

    if not gold:
        return False
    if candidate.source == "raw":
        if "\\boxed" in response or "\\fbox" in response:
            # A box was opened but never closed: the final answer is malformed. Do not fish a
            # number out of the surrounding text (the reference also scores this False).
            return False
        if not candidate.answer or len(candidate.answer) > RAW_MAX_CHARS:
            return False
        # The whole response, Minerva-normalised, is the answer (module docstring); a closing
        # sentence period is not part of it.
        answer = candidate.answer[:-1] if candidate.answer.endswith(".") else candidate.answer
        predicted = _parse_answer(answer) if answer else []
    else:
        predicted = _parse_answer(candidate.latex)
    predicted = _defined(predicted)
    if not predicted:
        return False
    return bool(verify(gold, predicted, timeout_seconds=_inner_timeout()))


def _string_equal(candidate: Candidate, gold_normalized: str) -> bool:
    """The reference's Hendrycks string check, refused for answers that evaluate to undefined."""
    if not gold_normalized or hendrycks_normalize(candidate.answer) != gold_normalized:
        return False
    text = candidate.latex or candidate.answer
    return len(text) > RAW_MAX_CHARS or not _undefined(_parse_answer(text))


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "..."


def validate_math_ground_truth(ground_truth: Any) -> None:
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise InvalidGroundTruthError(
            f"math ground truth must be a string or number, got {type(ground_truth).__name__}"
        )
    if not str(ground_truth).strip():
        raise InvalidGroundTruthError("math ground truth is empty")


def warm_up_math() -> None:
    """Import sympy/antlr and build the LaTeX parser once, before workers fork."""
    _parse_answer("\\frac{1}{2}")


@register_verifier(
    "math", aliases=("math_flex", "hendrycks_math"), validate=validate_math_ground_truth, warm_up=warm_up_math
)
def verify_math(response: str, ground_truth: Any, prompt: str = "") -> VerifierResult:
    gold_text = str(ground_truth).strip()
    gold_parsed = _parse_answer(gold_text)
    if _undefined(gold_parsed):
        # Nothing equals an undefined value (module docstring), not even the same expression.
        return VerifierResult(0.0, {"gold": _short(gold_text), "error": "gold answer is undefined"})
    gold = gold_parsed
    gold_normalized = hendrycks_normalize(gold_text)
    candidates = extract_candidates(response)
    details: dict[str, Any] = {
        "gold": _short(gold_text),
        "candidates": [{"source": c.source, "answer": _short(c.answer)} for c in candidates],
        "matched": None,
    }
    for candidate in candidates:
        if _math_verify_equal(gold, candidate, response):
            details["matched"] = {"source": candidate.source, "by": "math_verify"}
            return VerifierResult(1.0, details)
        if _string_equal(candidate, gold_normalized):
            details["matched"] = {"source": candidate.source, "by": "string"}
            return VerifierResult(1.0, details)
    return VerifierResult(0.0, details)
