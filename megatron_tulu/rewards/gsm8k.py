"""GSM8K verifier: the last number in the response must equal the gold answer.

Tülu 3's rule (open-instruct `verify_gsm8k_sample`): delete commas between digits, take the last
match of `[-+]?\\d*\\.\\d+|\\d+`, compare it with the gold answer as a lower-cased string. We keep
"last number wins" but make three deliberate changes, each of which only turns a wrong verdict
right:

* Signs. The reference regex attaches a sign only to decimals, so "-5" extracts "5" and a negative
  gold can never be matched. Here a leading "-", "+" or Unicode minus "−" belongs to the number
  when it is not preceded by a word character or a closing bracket ("x = -3" gives -3, while the
  subtraction "5-3" gives 3).
* Numeric comparison. "3.50" vs "3.5", "42.0" vs "42" and "0.5" vs ".5" are equal (exact
  `Decimal` comparison, no float rounding). A trailing sentence period ("... is 42.") was
  already ignored by the reference and still is.
* Thousands separators. Only a comma followed by exactly three digits is a separator, so
  "1,234,567" is 1234567 while a list "1,2,3" still ends in 3 (the reference joins "1,23" into 123).

The gold may be a bare number, a number with separators or a "$" sign, or a full GSM8K solution
ending in "#### 42". If the gold is not a number, or the response has no number, the comparison
falls back to the reference's lower-cased string equality.

`rule` selects the comparison (`verify --gsm8k-rule`, verifier option `rule`):

* `"numeric"` (default): the rule above.
* `"open-instruct"`: open-instruct's `GSM8KVerifier` as of its commit d979761 (2026-03, "Fix GSM8K
  reward parsing for signed answers"), exactly: join digits around every comma, take the last
  match of `[-+]?(?:\\d*\\.\\d+|\\d+)` (the whole response if none), compare its lower-cased string
  with the lower-cased gold string as given (no "####" handling, so "5.0" != "5").
* `"tulu3"`: the same at the Tülu 3 release, whose regex `[-+]?\\d*\\.\\d+|\\d+` signs decimals only
  ("-5" extracts "5").
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from megatron_tulu.rewards.registry import InvalidGroundTruthError, register_verifier
from megatron_tulu.rewards.types import VerifierResult

_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Optional sign (only when it cannot be a binary minus), then an integer or decimal.
_NUMBER = re.compile(r"(?:(?<![\w)\]}])([-+\u2212]))?(\d+(?:\.\d+)?|\.\d+)")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
_GOLD_MARKER = "####"
RULES = ("numeric", "open-instruct", "tulu3")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d),(\d)")
_OPEN_INSTRUCT_NUMBER = re.compile(r"[-+]?(?:\d*\.\d+|\d+)")
_TULU3_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def reference_string_rule(response: str, ground_truth: Any, number: re.Pattern[str]) -> tuple[bool, str]:
    """open-instruct's GSM8K comparison with extraction regex `number`: (correct, extracted)."""
    joined = _DIGIT_COMMA_DIGIT.sub(r"\1\2", response)
    numbers = number.findall(joined)
    extracted = numbers[-1] if numbers else joined
    return str(extracted).lower() == str(ground_truth).lower(), extracted


def extract_last_number(text: str) -> str | None:
    """The last number in `text` as a plain string ("-1234.5"), or None."""
    matches = _NUMBER.findall(_THOUSANDS_SEPARATOR.sub("", text))
    if not matches:
        return None
    sign, digits = matches[-1]
    return ("-" if sign in ("-", "\u2212") else "") + digits


def _as_decimal(number: str) -> Decimal | None:
    # Decimal() alone would also accept "NaN", "inf" and "1e5".
    if not _PLAIN_NUMBER.fullmatch(number):
        return None
    try:
        return Decimal(number)
    except InvalidOperation:
        return None


def normalize_gold(ground_truth: Any) -> str:
    """Gold answer as a string: the part after "####" if present, stripped of "$" and separators."""
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise InvalidGroundTruthError(
            f"gsm8k ground truth must be a string or number, got {type(ground_truth).__name__}"
        )
    text = str(ground_truth)
    if _GOLD_MARKER in text:
        text = text.rsplit(_GOLD_MARKER, 1)[1]
    return text.strip().replace("$", "").replace(",", "").replace("\u2212", "-").strip()


def validate_gsm8k_ground_truth(ground_truth: Any) -> None:
    if not normalize_gold(ground_truth):
        raise InvalidGroundTruthError("gsm8k ground truth is empty")


@register_verifier("gsm8k", validate=validate_gsm8k_ground_truth)
def verify_gsm8k(response: str, ground_truth: Any, prompt: str = "", rule: str = "numeric") -> VerifierResult:
    if rule not in RULES:
        raise ValueError(f"gsm8k rule must be one of {RULES}, got {rule!r}")
    if rule != "numeric":
        number = _OPEN_INSTRUCT_NUMBER if rule == "open-instruct" else _TULU3_NUMBER
        correct, extracted = reference_string_rule(response, ground_truth, number)
        return VerifierResult(
            float(correct), {"extracted": extracted[:200], "gold": str(ground_truth), "rule": rule}
        )
    gold = normalize_gold(ground_truth)
    predicted = extract_last_number(response)
    gold_number = _as_decimal(gold)
    if predicted is not None and gold_number is not None:
        correct = Decimal(predicted) == gold_number
    else:
        # No number on one side: the reference compares the strings themselves.
        compared = predicted if predicted is not None else response
        correct = compared.strip().lower() == gold.lower()
    return VerifierResult(float(correct), {"extracted": predicted, "gold": gold})
