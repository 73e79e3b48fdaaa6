"""Tülu 3 RLVR IF functions (`func_name` ground truths): every function at and beside its thresholds.

Expected verdicts are worked out by hand from open-instruct's `if_functions.py` semantics (the
module docstring of `megatron_tulu.rewards.ifeval.if_functions` lists the quirks kept on purpose).
"""

from __future__ import annotations

import json

import pytest

from megatron_tulu.rewards import verify_sample
from megatron_tulu.rewards.ifeval import if_functions as F
from megatron_tulu.rewards.ifeval.verifier import validate_ifeval_ground_truth, verify_ifeval
from megatron_tulu.rewards.registry import InvalidGroundTruthError

# The 25 names of open-instruct's IF_FUNCTIONS_MAP, typed out from its source.
OPEN_INSTRUCT_NAMES = {
    "verify_keywords",
    "verify_keyword_frequency",
    "validate_forbidden_words",
    "verify_letter_frequency",
    "validate_response_language",
    "verify_paragraph_count",
    "validate_word_constraint",
    "verify_sentence_constraint",
    "validate_paragraphs",
    "verify_postscript",
    "validate_placeholders",
    "verify_bullet_points",
    "validate_title",
    "validate_choice",
    "validate_highlighted_sections",
    "validate_sections",
    "validate_json_format",
    "validate_repeat_prompt",
    "validate_two_responses",
    "validate_uppercase",
    "validate_lowercase",
    "validate_frequency_capital_words",
    "validate_end",
    "validate_quotation",
    "validate_no_commas",
}
# Every argument key of a released row; the unused ones are null.
ALL_ARGS = (
    "N quantifier end_phrase keyword_list word forbidden_words letter i first_word "
    "postscript_marker options section_splitter original_prompt language"
).split()


def released(func_name: str, **arguments) -> str:
    """A ground truth as the released datasets store it: a JSON string, unused arguments null."""
    row = {"func_name": func_name, **dict.fromkeys(ALL_ARGS)}
    row.update(arguments)
    return json.dumps(row)


def score(response: str, func_name: str, **arguments) -> float:
    return verify_ifeval(response, released(func_name, **arguments)).score


def test_every_open_instruct_function_is_implemented():
    assert set(F.IF_FUNCTIONS) == OPEN_INSTRUCT_NAMES


def test_keywords_are_case_insensitive_substrings():
    assert score("The Cat sat", "verify_keywords", keyword_list=["cat", "SAT"]) == 1.0
    assert score("category", "verify_keywords", keyword_list=["cat"]) == 1.0  # substring, as upstream
    assert score("The cat", "verify_keywords", keyword_list=["cat", "dog"]) == 0.0


@pytest.mark.parametrize(("n", "expected"), [(1, 0.0), (2, 1.0), (3, 0.0)])
def test_keyword_frequency_is_exact_whole_word_count(n, expected):
    # "Cat" and "cat" count; "category" and "cats" do not.
    assert score("Cat, cat! category cats", "verify_keyword_frequency", word="cat", N=n) == expected


def test_forbidden_words_match_inside_words():
    assert score("a fine day", "validate_forbidden_words", forbidden_words=["bad"]) == 1.0
    assert score("a BADGE", "validate_forbidden_words", forbidden_words=["bad"]) == 0.0


@pytest.mark.parametrize(("n", "expected"), [(2, 0.0), (3, 1.0), (4, 0.0)])
def test_letter_frequency_is_exact_and_case_sensitive(n, expected):
    assert score("lollipop L", "verify_letter_frequency", letter="l", N=n) == expected


def test_letter_frequency_with_a_long_letter_scores_zero_with_a_reason():
    result = verify_ifeval("hello", released("verify_letter_frequency", letter="ll", N=1))
    assert result.score == 0.0 and "single character" in result.details["error"]


def test_response_language():
    english = "The weather is lovely today and we are going for a long walk in the park."
    german = "Das Wetter ist heute sehr schön und wir gehen im Park spazieren."
    assert score(english, "validate_response_language", language="en") == 1.0
    assert score(german, "validate_response_language", language="en") == 0.0
    assert score(german, "validate_response_language", language="de") == 1.0
    undetectable = verify_ifeval("12345 !!!", released("validate_response_language", language="en"))
    assert undetectable.score == 0.0 and "no language" in undetectable.details["error"]


@pytest.mark.parametrize(("n", "expected"), [(2, 0.0), (3, 1.0), (4, 0.0)])
def test_paragraph_count_with_dividers(n, expected):
    text = "one\n  * * *  \ntwo\n* * *\nthree"  # lines are stripped before splitting
    assert score(text, "verify_paragraph_count", N=n) == expected


def test_paragraph_count_rejects_empty_paragraphs():
    assert score("one\n* * *\n* * *\ntwo", "verify_paragraph_count", N=3) == 0.0


@pytest.mark.parametrize(
    ("words", "quantifier", "n", "expected"),
    [
        (9, "at least", 10, 0.0),
        (10, "at least", 10, 1.0),
        (10, "at most", 10, 1.0),
        (11, "at most", 10, 0.0),
        # around: tolerance max(round(N * 0.1), 1)
        (11, "around", 10, 1.0),
        (12, "around", 10, 0.0),
        (5, "around", 4, 1.0),  # tolerance never below 1
        (27, "around", 25, 1.0),  # round(2.5) == 2 (half to even)
        (28, "around", 25, 0.0),
        (39, "around", 35, 1.0),  # round(3.5000000000000004) == 4
        (40, "around", 35, 0.0),
        (10, "exactly", 10, 0.0),  # unknown quantifier
    ],
)
def test_word_constraint(words, quantifier, n, expected):
    text = " ".join(["w"] * words)
    assert score(text, "validate_word_constraint", N=n, quantifier=quantifier) == expected


# (quantifier, N, verdict) for a response holding exactly three of what the function counts
THREE_COUNTED = [
    ("at least", 3, 1.0),
    ("at least", 4, 0.0),
    ("at most", 3, 1.0),
    ("at most", 2, 0.0),
    ("around", 4, 1.0),  # ±1 at these N (sentences: always 1; capital words: max(round(N / 10), 1))
    ("around", 5, 0.0),
    ("around", 2, 1.0),
    ("around", 1, 0.0),
]


@pytest.mark.parametrize(("quantifier", "n", "expected"), THREE_COUNTED)
@pytest.mark.parametrize(
    ("func_name", "text"),
    [
        # three sentences: "e.g." and "Mr." are not breaks
        ("verify_sentence_constraint", "I like fruit, e.g. apples. Mr. Smith agrees! Do you?"),
        # three capital words: "I", "NASA", "OK" count; "Hello" and "ABCs" do not
        ("validate_frequency_capital_words", "Hello I saw NASA today, OK? ABCs"),
    ],
)
def test_quantified_count_of_three(func_name, text, quantifier, n, expected):
    assert score(text, func_name, N=n, quantifier=quantifier) == expected


def test_paragraphs_count_and_first_word():
    text = "Intro here.\n\nThe second one.\n\nLast."
    assert score(text, "validate_paragraphs", N=3, first_word="The", i=2) == 1.0
    assert score(text, "validate_paragraphs", N=3, first_word="Intro", i=2) == 0.0
    assert score(text, "validate_paragraphs", N=2, first_word="The", i=2) == 0.0
    assert score(text, "validate_paragraphs", N=4, first_word="The", i=2) == 0.0
    assert score(text, "validate_paragraphs", N=3, first_word="Th", i=2) == 1.0  # a prefix test
    assert score(text, "validate_paragraphs", N=3, first_word="Last", i=0) == 1.0  # i=0: last one


def test_paragraphs_index_out_of_range_scores_zero_with_a_reason():
    result = verify_ifeval("a\n\nb", released("validate_paragraphs", N=2, first_word="a", i=5))
    assert result.score == 0.0 and "IndexError" in result.details["error"]


def test_postscript():
    assert score("Body.\nP.S. see you", "verify_postscript", postscript_marker="P.S.") == 1.0
    assert score("Body.\nP.S.", "verify_postscript", postscript_marker="P.S.") == 0.0  # marker alone
    assert score("Body.\nP.S.  ", "verify_postscript", postscript_marker="P.S.") == 0.0
    assert score("Body only.", "verify_postscript", postscript_marker="P.S.") == 0.0


@pytest.mark.parametrize(("n", "expected"), [(2, 1.0), (3, 1.0), (4, 0.0)])
def test_placeholders_at_least(n, expected):
    assert score("Dear [name], at [address] on []", "validate_placeholders", N=n) == expected


@pytest.mark.parametrize(("n", "expected"), [(2, 0.0), (3, 1.0), (4, 0.0)])
def test_bullet_points_exact(n, expected):
    assert score("Fruits:\n* apple\n  - pear\n*banana\nend", "verify_bullet_points", N=n) == expected


def test_title():
    assert score("<<Joy>>\npoem", "validate_title") == 1.0
    assert score("<<>> empty title counts", "validate_title") == 1.0
    assert score("<Joy>", "validate_title") == 0.0
    assert score("<<Jo\ny>>", "validate_title") == 0.0  # not across lines


def test_choice_substring_and_string_options_quirk():
    assert score("My answer is yes.", "validate_choice", options=["My answer is yes.", "no"]) == 1.0
    assert score("Sure thing", "validate_choice", options=["My answer is yes.", "no"]) == 0.0
    # A string of options is iterated character by character upstream: any shared letter passes.
    assert score("xyz q", "validate_choice", options="abq") == 1.0


@pytest.mark.parametrize(("n", "expected"), [(2, 1.0), (3, 1.0), (4, 0.0)])
def test_highlighted_sections_at_least(n, expected):
    assert score("*one* and *two* and **", "validate_highlighted_sections", N=n) == expected


def test_sections():
    text = "SECTION 1 intro SECTION 2 body"
    assert score(text, "validate_sections", N=2, section_splitter="SECTION") == 1.0
    assert score(text, "validate_sections", N=3, section_splitter="SECTION") == 0.0
    # Text before the first splitter is a section of its own.
    assert score("Hi SECTION 1 a", "validate_sections", N=2, section_splitter="SECTION") == 1.0
    assert score("Hi SECTION 1 a", "validate_sections", N=1, section_splitter="SECTION") == 0.0
    empty = verify_ifeval("a", released("validate_sections", N=1, section_splitter=""))
    assert empty.score == 0.0 and "error" in empty.details


def test_json_format():
    assert score('{"a": [1, 2]}', "validate_json_format") == 1.0
    assert score("3", "validate_json_format") == 1.0
    assert score("```json\n{}\n```", "validate_json_format") == 0.0
    assert score('{"a": 1', "validate_json_format") == 0.0


def test_repeat_prompt_is_an_exact_prefix():
    prompt = "Write a poem about rain."
    assert score(prompt + " Rain falls.", "validate_repeat_prompt", original_prompt=prompt) == 1.0
    assert score("write a poem about rain. x", "validate_repeat_prompt", original_prompt=prompt) == 0.0


def test_two_responses():
    assert score("first\n******\nsecond", "validate_two_responses") == 1.0
    assert score("same\n******\n same ", "validate_two_responses") == 0.0
    assert score("a ****** b ****** c", "validate_two_responses") == 0.0
    assert score("a ***** b", "validate_two_responses") == 0.0


def test_upper_and_lower_case():
    assert score("HELLO 42!", "validate_uppercase") == 1.0
    assert score("HELLo", "validate_uppercase") == 0.0
    assert score("hello 42!", "validate_lowercase") == 1.0
    assert score("hellO", "validate_lowercase") == 0.0


def test_end_phrase():
    phrase = "Is there anything else I can help with?"
    assert score("Done. " + phrase, "validate_end", end_phrase=phrase) == 1.0
    assert score("Done. " + phrase + " Bye", "validate_end", end_phrase=phrase) == 0.0
    # The answer is stripped first (open-instruct's remove_thinking_section), so a newline passes.
    assert score("Done. " + phrase + "\n", "validate_end", end_phrase=phrase) == 1.0


def test_quotation_and_no_commas():
    assert score('"quoted"', "validate_quotation") == 1.0
    assert score('"open', "validate_quotation") == 0.0
    assert score("no commas here", "validate_no_commas") == 1.0
    assert score("one, two", "validate_no_commas") == 0.0


def test_thinking_section_is_removed_before_checking():
    # Upstream's remove_thinking_section: text after the last </think>, <answer> tags dropped.
    response = "<think>Let me think, carefully</think><answer>no commas at all</answer>"
    assert score(response, "validate_no_commas") == 1.0
    assert score("<think>Hmm, ok</think>", "validate_no_commas") == 1.0  # empty answer has no comma


def test_ground_truth_as_dict_and_verify_sample_route():
    gt = {"func_name": "validate_lowercase", "N": None}
    assert verify_ifeval("all lower", gt).score == 1.0
    assert verify_sample("Not Lower", released("validate_lowercase"), "IFEval", time_limit=None).score == 0.0


def test_missing_and_unexpected_arguments_score_zero_with_reason():
    missing = verify_ifeval("x", released("verify_keyword_frequency", word="x"))
    assert missing.score == 0.0 and "['N']" in missing.details["error"]
    extra = verify_ifeval("x", json.dumps({"func_name": "validate_lowercase", "N": 3}))
    assert extra.score == 0.0 and "takes no argument" in extra.details["error"]
    wrong_type = verify_ifeval("a b", released("validate_word_constraint", N="2", quantifier="at least"))
    assert wrong_type.score == 0.0 and "TypeError" in wrong_type.details["error"]


@pytest.mark.parametrize("bad", ['{"func_name": "no_such_function"}', '{"N": 3}', "[1]", "{broken json"])
def test_unusable_ground_truths_are_rejected_by_the_validator(bad):
    with pytest.raises(InvalidGroundTruthError):
        validate_ifeval_ground_truth(bad)


def test_unusable_ground_truth_scores_zero_in_training_never_raises():
    result = verify_sample("text", '{"func_name": "no_such_function"}', "ifeval", time_limit=None)
    assert result.score == 0.0 and "no_such_function" in result.details["error"]
