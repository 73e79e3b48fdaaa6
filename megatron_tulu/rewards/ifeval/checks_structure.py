"""IFEval checks on the response's layout: length, paragraphs, sections, lists, markup.

Semantics follow the reference checkers (google-research `instruction_following_eval`, as shipped
in lm-eval). The regexes are the reference's, so verdicts agree
exactly; a few of them backtrack quadratically on pathological input (e.g. 200 KB of blank lines),
which the sandbox's hard time limit turns into a failed check.
"""

from __future__ import annotations

import json
import re
from typing import Any

from megatron_tulu.rewards.ifeval.spec import (
    compare,
    get_int,
    get_relation,
    get_str,
    instruction,
)
from megatron_tulu.rewards.ifeval.text import count_sentences, count_words
from megatron_tulu.rewards.registry import InvalidGroundTruthError

# ---------------------------------------------------------------- length_constraints


def _sentences(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"num_sentences": get_int(kwargs, "num_sentences"), "relation": get_relation(kwargs, "relation")}


@instruction("length_constraints:number_sentences", _sentences)
def number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(response), relation, num_sentences)


def _words(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"num_words": get_int(kwargs, "num_words"), "relation": get_relation(kwargs, "relation")}


@instruction("length_constraints:number_words", _words)
def number_words(response: str, num_words: int, relation: str) -> bool:
    return compare(count_words(response), relation, num_words)


def _paragraphs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"num_paragraphs": get_int(kwargs, "num_paragraphs")}


_MARKDOWN_DIVIDER = re.compile(r"\s?\*\*\*\s?")


@instruction("length_constraints:number_paragraphs", _paragraphs)
def number_paragraphs(response: str, num_paragraphs: int) -> bool:
    # Paragraphs are separated by "***"; an empty piece is allowed only at either end.
    pieces = _MARKDOWN_DIVIDER.split(response)
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if index in (0, len(pieces) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def _nth_paragraph(kwargs: dict[str, Any]) -> dict[str, Any]:
    num_paragraphs = get_int(kwargs, "num_paragraphs", minimum=1)
    nth = get_int(kwargs, "nth_paragraph", minimum=1)
    if nth > num_paragraphs:
        raise InvalidGroundTruthError(f"nth_paragraph {nth} > num_paragraphs {num_paragraphs}")
    return {
        "num_paragraphs": num_paragraphs,
        "nth_paragraph": nth,
        "first_word": get_str(kwargs, "first_word").lower(),
    }


_FIRST_WORD_STOP = set(".,?!'\"")


@instruction("length_constraints:nth_paragraph_first_word", _nth_paragraph)
def nth_paragraph_first_word(response: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    # Paragraphs are separated by "\n\n"; empty ones do not count (but keep their index, as in
    # the reference, which indexes the unfiltered list).
    paragraphs = response.split("\n\n")
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    actual = ""
    for char in word:
        if char in _FIRST_WORD_STOP:
            break
        actual += char.lower()
    return count == num_paragraphs and actual == first_word


# ---------------------------------------------------------------- detectable_content


def _postscript(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"postscript_marker": get_str(kwargs, "postscript_marker")}


@instruction("detectable_content:postscript", _postscript)
def postscript(response: str, postscript_marker: str) -> bool:
    # Markers "P.S." and "P.P.S" tolerate a space after each dot; others must appear verbatim
    # (case-insensitive). Any position in the text counts, as in the reference.
    text = response.lower()
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = postscript_marker.lower()  # a regex in the reference, too
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return postscript_marker.lower() in text


def _placeholders(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"num_placeholders": get_int(kwargs, "num_placeholders")}


_PLACEHOLDER = re.compile(r"\[.*?\]")


@instruction("detectable_content:number_placeholders", _placeholders)
def number_placeholders(response: str, num_placeholders: int) -> bool:
    return len(_PLACEHOLDER.findall(response)) >= num_placeholders


# ---------------------------------------------------------------- detectable_format


def _bullets(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"num_bullets": get_int(kwargs, "num_bullets")}


_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)


@instruction("detectable_format:number_bullet_lists", _bullets)
def number_bullet_lists(response: str, num_bullets: int) -> bool:
    # Exactly `num_bullets` lines starting with "* " or "-" (the reference counts "---" too).
    return len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response)) == num_bullets


_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@instruction("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    return any(option in response.strip() for option in _CONSTRAINED_OPTIONS)


def _highlights(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"num_highlights": get_int(kwargs, "num_highlights")}


_SINGLE_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")


@instruction("detectable_format:number_highlighted_sections", _highlights)
def number_highlighted_sections(response: str, num_highlights: int) -> bool:
    # *x* and **x** both count; the reference's two regexes are applied independently, and
    # "**x**" only matches the double one (the single one sees two empty "**" there).
    count = sum(1 for h in _SINGLE_HIGHLIGHT.findall(response) if h.strip("*").strip())
    count += sum(1 for h in _DOUBLE_HIGHLIGHT.findall(response) if h[2:-2].strip())
    return count >= num_highlights


def _sections(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "section_spliter": get_str(kwargs, "section_spliter"),
        "num_sections": get_int(kwargs, "num_sections"),
    }


@instruction("detectable_format:multiple_sections", _sections)
def multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    # Sections start with "<spliter> <number>", e.g. "SECTION 1"; case-sensitive as in the reference.
    splitter = re.compile(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?")
    return len(splitter.split(response)) - 1 >= num_sections


@instruction("detectable_format:json_format")
def json_format(response: str) -> bool:
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_TITLE = re.compile(r"<<[^\n]+>>")


@instruction("detectable_format:title")
def title(response: str) -> bool:
    return any(found.lstrip("<").rstrip(">").strip() for found in _TITLE.findall(response))
