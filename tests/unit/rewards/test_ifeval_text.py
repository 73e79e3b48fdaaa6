"""Sentence splitting (Punkt stand-in), word tokenization and word counting for IFEval."""

import pytest

from megatron_tulu.rewards.ifeval.text import count_sentences, count_words, split_sentences, word_tokenize


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello world. This is a test.", ["Hello world.", "This is a test."]),
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("Use fruit, e.g. apples, i.e. red ones. Done.", ["Use fruit, e.g. apples, i.e. red ones.", "Done."]),
        ("It costs 3.50 dollars. Cheap!", ["It costs 3.50 dollars.", "Cheap!"]),
        ("Wait... what happened? Nothing.", ["Wait... what happened?", "Nothing."]),
        ("I paused... The end.", ["I paused...", "The end."]),
        ('"Stop!" he said. Then he left.', ['"Stop!"', "he said.", "Then he left."]),
        ("J. K. Rowling wrote it.", ["J. K. Rowling wrote it."]),
        ("The U.S. economy grew. Prices rose.", ["The U.S. economy grew.", "Prices rose."]),
        ("1. First step\n2. Second step", ["1.", "First step\n2.", "Second step"]),
        ("Chapter 3. and more", ["Chapter 3. and more"]),
        ("A title\nno punctuation at all", ["A title\nno punctuation at all"]),
        ("end.Next starts without space", ["end.Next starts without space"]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
        ("(See above.) Next.", ["(See above.)", "Next."]),
        ("", []),
        ("  \n ", []),
    ],
)
def test_split_sentences_matches_punkt_on_ordinary_text(text, sentences):
    assert split_sentences(text) == sentences


def test_sentence_split_is_linear_on_hostile_input():
    # 200 KB of marks without whitespace and of short sentences both finish (no time assertion:
    # a quadratic implementation would simply not finish within the test timeout). Inside one
    # whitespace-free chunk only the last mark is a candidate boundary, as in Punkt.
    assert count_sentences("a.)" * 70_000) == 1
    assert count_sentences("Go. " * 50_000) == 50_000


def test_count_words_is_the_reference_regex():
    assert count_words("Hello, world! It's 2024 -- fine_tuned.") == 6


def test_word_tokenize_splits_like_treebank_for_case_counting():
    assert word_tokenize("I DON'T KNOW, it's CANNOT (OK) well-KNOWN U.S. A/B") == [
        "I", "DO", "N'T", "KNOW", ",", "it", "'s", "CAN", "NOT", "(", "OK", ")", "well-KNOWN", "U.S.", "A/B",
    ]  # fmt: skip
