"""The RLVR "func_name" IF functions: Tülu 3's released IF prompts and their verdicts.

allenai/RLVR-IFeval and allenai/RLVR-GSM-MATH-IF-Mixed-Constraints store an IF row's ground truth as
a JSON object naming one function and its arguments, every unused argument null::

    {"func_name": "verify_keyword_frequency", "word": "cat", "N": 3, "quantifier": null, ...}

open-instruct scores these with ``IF_FUNCTIONS_MAP`` (``open_instruct/if_functions.py``) through
``IFEvalVerifierOld`` (``ground_truth_utils.py``): the response goes through
``remove_thinking_section`` (here ``thinking.open_instruct_answer``), null arguments are dropped,
and the named function returns a bool. Tülu 3's RL reward was computed this way, so every function
below has the same semantics as its namesake, including its quirks, which are kept on purpose and
listed where they matter (substring keyword tests, ``round`` half-to-even in "around" tolerances,
a string ``options`` iterated character by character, Python's negative index for paragraph 0).

The code is written here, not copied. Two deliberate differences, both only where open-instruct
would crash: a function that cannot evaluate its input (wrong argument types, a missing argument,
a multi-character ``letter``, undetectable language, an out-of-range paragraph index) scores 0
with the reason instead of raising (``evaluate``); and language detection uses langdetect with a
fixed seed (open-instruct's is unseeded, so its verdict on short or mixed text can change from
call to call).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any

from megatron_tulu.rewards.ifeval.text import detect_language

_WORD = re.compile(r"\b\w+\b")
_PLACEHOLDER = re.compile(r"\[(.*?)\]")
_TITLE = re.compile(r"<<(.*?)>>")
_HIGHLIGHT = re.compile(r"\*(.*?)\*")
_CAPITAL_WORD = re.compile(r"\b[A-Z]+\b")
# A sentence ends at whitespace preceded by ".", "?" or "!", unless the period closes an
# abbreviation such as "e.g." (letter, dot, letter, dot) or "Mr." (capital + lower-case letter).
# This is the split open-instruct counts sentences with; the count is the number of pieces.
_SENTENCE_BREAK = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s")
_PARAGRAPH_DIVIDER = "* * *"
_TWO_RESPONSES_SEPARATOR = "******"


def _around_tolerance(n: Any) -> int:
    # Python's round() is half-to-even: N=25 gives tolerance 2, N=35 gives 4 (3.5000000000000004).
    return max(round(n * 0.1), 1)


def _quantified(count: int, n: Any, quantifier: Any, around: int) -> bool:
    if quantifier == "at least":
        return count >= n
    if quantifier == "at most":
        return count <= n
    if quantifier == "around":
        return abs(count - n) <= around
    return False  # an unknown quantifier is simply not satisfied (as in open-instruct)


def verify_keywords(text: str, keyword_list: list[str]) -> bool:
    """Every keyword occurs, case-insensitively, as a substring ("cat" is found in "category")."""
    lowered = text.lower()
    return all(keyword.lower() in lowered for keyword in keyword_list)


def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    """``word`` occurs exactly N times as a whole word (``\\b\\w+\\b`` tokens, case-insensitive)."""
    target = word.lower()
    return sum(token == target for token in _WORD.findall(text.lower())) == N


def validate_forbidden_words(text: str, forbidden_words: list[str]) -> bool:
    """No forbidden word occurs, case-insensitively, even as a substring of another word."""
    lowered = text.lower()
    return not any(word.lower() in lowered for word in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    """``letter`` (one character, case-sensitive) occurs exactly N times."""
    if len(letter) != 1:
        raise ValueError(f"letter must be a single character, got {letter!r}")
    return text.count(letter) == N


def validate_response_language(text: str, language: str) -> bool:
    """langdetect's verdict on the whole response equals the ISO code ``language``."""
    detected = detect_language(text)
    if detected is None:
        raise ValueError("langdetect found no language features in the response")
    return detected == language


def verify_paragraph_count(text: str, N: int) -> bool:
    """Exactly N non-empty paragraphs separated by the markdown divider "* * *"."""
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = cleaned.split(_PARAGRAPH_DIVIDER)
    if any(not paragraph.strip() for paragraph in paragraphs):
        return False
    return len(paragraphs) == N


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    """Whitespace-separated word count "at least" / "at most" / "around" (±max(round(N/10), 1)) N."""
    around = _around_tolerance(N)
    return _quantified(len(text.strip().split()), N, quantifier, around)


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    """Sentence count "at least" / "at most" / "around" (±1) N; text with no break is 1 sentence."""
    return _quantified(len(_SENTENCE_BREAK.split(text)), N, quantifier, 1)


def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    """Exactly N paragraphs split on "\\n\\n", and paragraph i (1-based) starts with ``first_word``.

    "Starts with" is a string prefix test ("Therefore" passes for "The"); as in Python indexing,
    i = 0 means the last paragraph.
    """
    paragraphs = text.split("\n\n")
    if len(paragraphs) != N:
        return False
    return paragraphs[i - 1].strip().startswith(first_word)


def verify_postscript(text: str, postscript_marker: str) -> bool:
    """The marker occurs and is followed by something (the text from its first occurrence,
    stripped, is longer than the marker)."""
    at = text.find(postscript_marker)
    if at < 0:
        return False
    return len(text[at:].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int) -> bool:
    """At least N "[...]" placeholders on single lines (``[]`` counts)."""
    return len(_PLACEHOLDER.findall(text)) >= N


def verify_bullet_points(text: str, N: int) -> bool:
    """Exactly N lines that start, after stripping, with "*" or "-" (so "---" and "**bold**" count)."""
    bullets = sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-")))
    return bullets == N


def validate_title(text: str) -> bool:
    """At least one "<<...>>" on one line (an empty ``<<>>`` counts)."""
    return bool(_TITLE.findall(text))


def validate_choice(text: str, options: Any) -> bool:
    """Some option occurs as a substring of the response.

    ``options`` is iterated as given: a list checks each option, while a string (as some released
    rows store it) checks each of its characters, which nearly always passes. Reproduced as is.
    """
    return any(option in text for option in options)


def validate_highlighted_sections(text: str, N: int) -> bool:
    """At least N "*...*" spans on single lines (``**`` counts as an empty span)."""
    return len(_HIGHLIGHT.findall(text)) >= N


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    """Splitting on ``section_splitter`` gives N pieces, not counting an empty piece before the first."""
    sections = text.split(section_splitter)
    if sections[0] == "":
        sections = sections[1:]
    return len(sections) == N


def validate_json_format(text: str) -> bool:
    """The whole response parses as JSON (any JSON value: "3" and "null" pass)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    """The response starts with the prompt, character for character."""
    return text.startswith(original_prompt)


def validate_two_responses(text: str) -> bool:
    """Exactly one "******" separator and two different (after stripping) sides."""
    if text.count(_TWO_RESPONSES_SEPARATOR) != 1:
        return False
    first, second = text.split(_TWO_RESPONSES_SEPARATOR)
    return first.strip() != second.strip()


def validate_uppercase(text: str) -> bool:
    """Unchanged by upper-casing (text with no letters passes)."""
    return text == text.upper()


def validate_lowercase(text: str) -> bool:
    """Unchanged by lower-casing (text with no letters passes)."""
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    """Count of ``\\b[A-Z]+\\b`` words (one capital letter such as "I" counts) against N."""
    count = len(_CAPITAL_WORD.findall(text))
    return _quantified(count, N, quantifier, _around_tolerance(N))


def validate_end(text: str, end_phrase: str) -> bool:
    """The response ends with ``end_phrase`` exactly (case and punctuation included)."""
    return text.endswith(end_phrase)


def validate_quotation(text: str) -> bool:
    """Starts and ends with a double quote (a lone '"' passes)."""
    return text.startswith('"') and text.endswith('"')


def validate_no_commas(text: str) -> bool:
    """No ASCII comma."""
    return "," not in text


IF_FUNCTIONS: dict[str, Callable[..., bool]] = {
    fn.__name__: fn
    for fn in (
        verify_keywords,
        verify_keyword_frequency,
        validate_forbidden_words,
        verify_letter_frequency,
        validate_response_language,
        verify_paragraph_count,
        validate_word_constraint,
        verify_sentence_constraint,
        validate_paragraphs,
        verify_postscript,
        validate_placeholders,
        verify_bullet_points,
        validate_title,
        validate_choice,
        validate_highlighted_sections,
        validate_sections,
        validate_json_format,
        validate_repeat_prompt,
        validate_two_responses,
        validate_uppercase,
        validate_lowercase,
        validate_frequency_capital_words,
        validate_end,
        validate_quotation,
        validate_no_commas,
    )
}


def function_arguments(name: str) -> list[str]:
    """The argument names function ``name`` takes after the response text."""
    return list(inspect.signature(IF_FUNCTIONS[name]).parameters)[1:]


def evaluate(name: str, answer: str, arguments: dict[str, Any]) -> tuple[bool, str | None]:
    """``(verdict, None)``, or ``(False, reason)`` when the function cannot evaluate this input.

    ``arguments`` are the non-null ground-truth arguments. An argument the function does not take,
    or one it needs and lacks, is a reason (open-instruct raises TypeError on both).
    """
    fn = IF_FUNCTIONS[name]
    expected = function_arguments(name)
    unexpected = sorted(set(arguments) - set(expected))
    if unexpected:
        return False, f"{name} takes no argument(s) {unexpected}; it takes {expected}"
    missing = [arg for arg in expected if arg not in arguments]
    if missing:
        return False, f"{name} needs argument(s) {missing}, which are missing or null"
    try:
        return bool(fn(answer, **arguments)), None
    except Exception as exc:  # bad argument types or values: 0 with the reason, never a crash
        return False, f"{name} could not evaluate: {type(exc).__name__}: {exc}"
