"""IFEval checks on words and letters: keywords, language, letter case, punctuation.

Semantics follow the reference checkers (google-research `instruction_following_eval`, as shipped
in lm-eval); comments note where and why we differ.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from megatron_tulu.rewards.ifeval.spec import (
    compare,
    get_int,
    get_relation,
    get_str,
    get_str_list,
    instruction,
)
from megatron_tulu.rewards.ifeval.text import detect_language, word_tokenize
from megatron_tulu.rewards.registry import InvalidGroundTruthError


def _keyword_pattern(keyword: str, whole_word: bool = False) -> re.Pattern[str]:
    # The reference uses keywords as regular expressions (unescaped); keep that, but a keyword
    # that is not a valid regex ("C++") is matched literally instead of crashing.
    boundary = r"\b" if whole_word else ""
    try:
        return re.compile(boundary + keyword + boundary, re.IGNORECASE)
    except re.error:
        return re.compile(boundary + re.escape(keyword) + boundary, re.IGNORECASE)


def _keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"keywords": sorted(get_str_list(kwargs, "keywords"))}


@instruction("keywords:existence", _keywords)
def keywords_existence(response: str, keywords: list[str]) -> bool:
    return all(_keyword_pattern(keyword).search(response) for keyword in keywords)


def _frequency(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "keyword": get_str(kwargs, "keyword"),
        "frequency": get_int(kwargs, "frequency"),
        "relation": get_relation(kwargs, "relation"),
    }


@instruction("keywords:frequency", _frequency)
def keywords_frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    return compare(len(_keyword_pattern(keyword).findall(response)), relation, frequency)


def _forbidden(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"forbidden_words": sorted(set(get_str_list(kwargs, "forbidden_words")))}


@instruction("keywords:forbidden_words", _forbidden)
def keywords_forbidden_words(response: str, forbidden_words: list[str]) -> bool:
    # Whole-word match, case-insensitive.
    return not any(_keyword_pattern(word, whole_word=True).search(response) for word in forbidden_words)


def _letter(kwargs: dict[str, Any]) -> dict[str, Any]:
    letter = get_str(kwargs, "letter").lower()
    if len(letter) != 1 or not ("a" <= letter <= "z"):
        raise InvalidGroundTruthError(f"kwarg 'letter' must be one ASCII letter, got {letter!r}")
    return {
        "letter": letter,
        "let_frequency": get_int(kwargs, "let_frequency"),
        "let_relation": get_relation(kwargs, "let_relation"),
    }


@instruction("keywords:letter_frequency", _letter)
def keywords_letter_frequency(response: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return compare(Counter(response.lower())[letter], let_relation, let_frequency)


def _language(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"language": get_str(kwargs, "language")}


@instruction("language:response_language", _language)
def response_language(response: str, language: str) -> bool:
    detected = detect_language(response)
    # As the reference: undetectable text (digits, symbols) counts as followed.
    return detected is None or detected == language


def _capital_frequency(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "capital_frequency": get_int(kwargs, "capital_frequency"),
        "capital_relation": get_relation(kwargs, "capital_relation"),
    }


@instruction("change_case:capital_word_frequency", _capital_frequency)
def capital_word_frequency(response: str, capital_frequency: int, capital_relation: str) -> bool:
    capital_words = sum(1 for token in word_tokenize(response) if token.isupper())
    return compare(capital_words, capital_relation, capital_frequency)


@instruction("change_case:english_capital")
def english_capital(response: str) -> bool:
    return response.isupper() and response_language(response, "en")


@instruction("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    return response.islower() and response_language(response, "en")


@instruction("punctuation:no_comma")
def no_comma(response: str) -> bool:
    return "," not in response
