"""Every IFEval instruction type: passing, failing and boundary cases.

Verdicts are derived by hand from the reference checkers' semantics (google-research
instruction_following_eval / lm-eval `instructions.py`).
"""

import pytest

from megatron_tulu.rewards.ifeval import INSTRUCTIONS, validate_instruction
from megatron_tulu.rewards.registry import InvalidGroundTruthError


def check(instruction_id: str, response: str, **kwargs) -> bool:
    return INSTRUCTIONS[instruction_id].check(response, **validate_instruction(instruction_id, kwargs))


def test_all_25_instruction_types_are_registered():
    assert sorted(INSTRUCTIONS) == sorted(
        [
            "keywords:existence",
            "keywords:frequency",
            "keywords:forbidden_words",
            "keywords:letter_frequency",
            "language:response_language",
            "length_constraints:number_sentences",
            "length_constraints:number_paragraphs",
            "length_constraints:number_words",
            "length_constraints:nth_paragraph_first_word",
            "detectable_content:number_placeholders",
            "detectable_content:postscript",
            "detectable_format:number_bullet_lists",
            "detectable_format:constrained_response",
            "detectable_format:number_highlighted_sections",
            "detectable_format:multiple_sections",
            "detectable_format:json_format",
            "detectable_format:title",
            "combination:two_responses",
            "combination:repeat_prompt",
            "startend:end_checker",
            "startend:quotation",
            "change_case:capital_word_frequency",
            "change_case:english_capital",
            "change_case:english_lowercase",
            "punctuation:no_comma",
        ]
    )


# ---------------------------------------------------------------- keywords


def test_keywords_existence():
    assert check("keywords:existence", "I love Python and RUST.", keywords=["python", "rust"])
    assert not check("keywords:existence", "I love Python.", keywords=["python", "rust"])
    assert check("keywords:existence", "pythonic code", keywords=["python"])  # substring, as reference
    assert check("keywords:existence", "I write C++ daily", keywords=["C++"])  # invalid regex -> literal


@pytest.mark.parametrize(
    ("count", "relation", "frequency", "expected"),
    [
        (2, "less than", 3, True),
        (3, "less than", 3, False),  # boundary: "less than" is strict
        (3, "at least", 3, True),  # boundary: "at least" includes equality
        (2, "at least", 3, False),
        (0, "less than", 1, True),
    ],
)
def test_keywords_frequency(count, relation, frequency, expected):
    response = " ".join(["Cat"] * count + ["dog"])
    assert (
        check("keywords:frequency", response, keyword="cat", frequency=frequency, relation=relation)
        is expected
    )


def test_keywords_forbidden_words():
    assert check("keywords:forbidden_words", "The scatter plot.", forbidden_words=["cat"])  # whole words only
    assert not check("keywords:forbidden_words", "A CAT sat.", forbidden_words=["cat", "dog"])


@pytest.mark.parametrize(
    ("relation", "frequency", "expected"),
    [("less than", 4, False), ("less than", 5, True), ("at least", 4, True), ("at least", 5, False)],
)
def test_keywords_letter_frequency(relation, frequency, expected):
    response = "BAnana bread"  # 'a' occurs 4 times, counted case-insensitively
    assert (
        check(
            "keywords:letter_frequency", response, letter="a", let_frequency=frequency, let_relation=relation
        )
        is expected
    )


# ---------------------------------------------------------------- language and case


def test_response_language():
    english = "The weather is lovely today and we are going to walk in the park together."
    french = "Le temps est magnifique aujourd'hui et nous allons nous promener dans le parc ensemble."
    assert check("language:response_language", english, language="en")
    assert not check("language:response_language", english, language="fr")
    assert check("language:response_language", french, language="fr")
    assert check("language:response_language", "12345 !!!", language="fr")  # undetectable -> followed


def test_english_capital_and_lowercase():
    assert check("change_case:english_capital", "THIS IS ALL IN CAPITAL LETTERS, WRITTEN IN ENGLISH.")
    assert not check("change_case:english_capital", "THIS IS MOSTLY CAPITAL but not all.")
    assert check("change_case:english_lowercase", "this is all lowercase english text about the weather.")
    assert not check("change_case:english_lowercase", "this is lowercase except for One word.")
    assert not check(
        "change_case:english_lowercase", "le temps est magnifique aujourd'hui et nous allons au parc."
    )


@pytest.mark.parametrize(
    ("relation", "frequency", "expected"),
    [("at least", 4, True), ("at least", 5, False), ("less than", 4, False), ("less than", 5, True)],
)
def test_capital_word_frequency(relation, frequency, expected):
    # Tokens counted: NASA, DON, N'T (split contraction), STOP -> 4; "Hello" and "well-KNOWN" are not.
    response = "Hello NASA, we DON'T STOP the well-KNOWN plan."
    assert (
        check(
            "change_case:capital_word_frequency",
            response,
            capital_frequency=frequency,
            capital_relation=relation,
        )
        is expected
    )


def test_no_comma():
    assert check("punctuation:no_comma", "No commas here.")
    assert not check("punctuation:no_comma", "One, two.")


# ---------------------------------------------------------------- length constraints


@pytest.mark.parametrize(
    ("relation", "threshold", "expected"),
    [("less than", 3, False), ("less than", 4, True), ("at least", 3, True), ("at least", 4, False)],
)
def test_number_sentences(relation, threshold, expected):
    response = "Mr. Smith paid $3.50 for lunch. It was good, e.g. the soup. Would he return?"  # 3 sentences
    assert (
        check("length_constraints:number_sentences", response, num_sentences=threshold, relation=relation)
        is expected
    )


@pytest.mark.parametrize(
    ("relation", "threshold", "expected"),
    [("less than", 5, False), ("less than", 6, True), ("at least", 5, True), ("at least", 6, False)],
)
def test_number_words(relation, threshold, expected):
    response = "Hello, world! It's fine."  # \w+ words: Hello world It s fine -> 5
    assert (
        check("length_constraints:number_words", response, num_words=threshold, relation=relation) is expected
    )


def test_number_paragraphs():
    assert check("length_constraints:number_paragraphs", "A\n***\nB\n***\nC", num_paragraphs=3)
    assert not check("length_constraints:number_paragraphs", "A\n***\nB\n***\nC", num_paragraphs=2)
    assert check("length_constraints:number_paragraphs", "***\nA\n***\nB\n***", num_paragraphs=2)  # ends ok
    assert not check(
        "length_constraints:number_paragraphs", "A\n***\n\n***\nB", num_paragraphs=2
    )  # empty middle


def test_nth_paragraph_first_word():
    text = 'Intro here.\n\n"Summer, is great.\n\nEnd.'
    assert check(
        "length_constraints:nth_paragraph_first_word",
        text,
        num_paragraphs=3,
        nth_paragraph=2,
        first_word="Summer",
    )
    assert not check(
        "length_constraints:nth_paragraph_first_word",
        text,
        num_paragraphs=3,
        nth_paragraph=2,
        first_word="intro",
    )
    assert not check(  # paragraph count must match too
        "length_constraints:nth_paragraph_first_word",
        text,
        num_paragraphs=4,
        nth_paragraph=2,
        first_word="summer",
    )
    assert not check(
        "length_constraints:nth_paragraph_first_word",
        "One.",
        num_paragraphs=2,
        nth_paragraph=2,
        first_word="two",
    )


# ---------------------------------------------------------------- detectable content / format


def test_postscript():
    assert check("detectable_content:postscript", "Body.\n\nP.S. See you.", postscript_marker="P.S.")
    assert check("detectable_content:postscript", "Body.\np. s. lowercase too", postscript_marker="P.S.")
    assert not check("detectable_content:postscript", "Body. PS no dots", postscript_marker="P.S.")
    assert check("detectable_content:postscript", "Body.\nP.P.S more", postscript_marker="P.P.S")
    assert not check("detectable_content:postscript", "Body.\nP.S. only one", postscript_marker="P.P.S")


def test_number_placeholders():
    assert check("detectable_content:number_placeholders", "Dear [name] at [address]", num_placeholders=2)
    assert not check("detectable_content:number_placeholders", "Dear [name]", num_placeholders=2)


def test_number_bullet_lists():
    text = "Items:\n* one\n* two\n- three\n**bold** line"
    assert check("detectable_format:number_bullet_lists", text, num_bullets=3)  # "**bold" is not a bullet
    assert not check("detectable_format:number_bullet_lists", text, num_bullets=2)  # exact count
    assert not check("detectable_format:number_bullet_lists", text, num_bullets=4)


def test_constrained_response():
    assert check("detectable_format:constrained_response", "Hmm. My answer is maybe.")
    assert not check("detectable_format:constrained_response", "My answer is probably yes.")


@pytest.mark.parametrize(("threshold", "expected"), [(3, True), (4, False)])
def test_number_highlighted_sections(threshold, expected):
    text = "*first* and **second** and *third* and ** ** empty"
    assert check("detectable_format:number_highlighted_sections", text, num_highlights=threshold) is expected


def test_multiple_sections():
    text = "SECTION 1\nintro\nSECTION 2\nbody\nSECTION 3\nend"
    assert check("detectable_format:multiple_sections", text, section_spliter="SECTION", num_sections=3)
    assert not check("detectable_format:multiple_sections", text, section_spliter="SECTION", num_sections=4)
    assert not check("detectable_format:multiple_sections", text, section_spliter="Section", num_sections=1)


def test_json_format():
    assert check("detectable_format:json_format", '```json\n{"a": 1}\n```')
    assert check("detectable_format:json_format", " [1, 2] ")
    assert not check("detectable_format:json_format", 'Here it is: {"a": 1}')


def test_title():
    assert check("detectable_format:title", "<<My Poem>>\nRoses are red")
    assert not check("detectable_format:title", "<<   >> empty title")
    assert not check("detectable_format:title", "<<split\ntitle>>")


# ---------------------------------------------------------------- combination / startend


def test_two_responses():
    assert check("combination:two_responses", "Answer A.\n******\nAnswer B.")
    assert not check("combination:two_responses", "Same.\n******\nSame.")
    assert not check("combination:two_responses", "A\n******\n\n******\nB")
    assert not check("combination:two_responses", "Only one.")


def test_repeat_prompt():
    prompt = "Write a haiku about rain."
    assert check(
        "combination:repeat_prompt", "write a haiku about rain. Drops fall...", prompt_to_repeat=prompt
    )
    assert not check("combination:repeat_prompt", "Sure! Write a haiku about rain.", prompt_to_repeat=prompt)


def test_end_checker():
    assert check("startend:end_checker", 'Bye. Any other questions?"  ', end_phrase="any other questions?")
    assert not check("startend:end_checker", "Any other questions? Bye.", end_phrase="Any other questions?")


def test_quotation():
    assert check("startend:quotation", '  "wrapped"  ')
    assert not check("startend:quotation", '"')
    assert not check("startend:quotation", 'not "wrapped"')


# ---------------------------------------------------------------- kwarg validation


@pytest.mark.parametrize(
    ("instruction_id", "kwargs"),
    [
        ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at most"}),
        ("keywords:frequency", {"keyword": "cat", "relation": "at least"}),
        ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"}),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"},
        ),
        ("detectable_format:title_case", {}),
        ("keywords:existence", {"keywords": []}),
    ],
)
def test_invalid_kwargs_are_rejected(instruction_id, kwargs):
    with pytest.raises(InvalidGroundTruthError):
        validate_instruction(instruction_id, kwargs)


def test_null_kwargs_from_hf_dataset_are_ignored():
    kwargs = {"num_words": 3, "relation": "less than", "keywords": None, "language": None}
    assert validate_instruction("length_constraints:number_words", kwargs) == {
        "num_words": 3,
        "relation": "less than",
    }
