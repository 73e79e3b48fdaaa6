"""MATH flex verifier: extraction paths, normalisation, equivalence, hostile inputs."""

import pytest

from megatron_tulu.rewards import verify_sample
from megatron_tulu.rewards.math_extract import (
    extract_candidates,
    last_boxed_answer,
    last_dollar_span,
    minerva_answer,
)
from megatron_tulu.rewards.math_normalize import hendrycks_normalize, minerva_normalize
from megatron_tulu.rewards.math_verifier import verify_math

# ------------------------------------------------------------------ extraction paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{5}", "5"),
        (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # last one
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are content
        (r"\boxed{a{b{c}}d}", "a{b{c}}d"),  # nested
        (r"$\boxed 5$", "5"),
        (r"\boxed 12" + "\nmore", "12"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1} and \fbox{2}", "2"),
        (r"\boxed{3", None),  # unbalanced
        ("no box", None),
        (r"\boxed", None),
    ],
)
def test_last_boxed_answer(text, expected):
    assert last_boxed_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Final Answer: The final answer is $5$. I hope it is correct.", "$5$"),
        ("Final Answer: The final answer is 7. I hope it is correct.\nextra", "7"),
        ("Final Answer: The final answer is 9. ", "9"),  # reference appends the suffix to the text
        ("Final Answer: The final answer is 5.\nI hope it is correct.", None),  # must be one line
        ("The final answer is 5.", None),
    ],
)
def test_minerva_answer(text, expected):
    assert minerva_answer(text) == expected


def test_last_dollar_span():
    assert last_dollar_span("we get $x=1$ and then $y = 2$.") == "y = 2"
    assert last_dollar_span("only $5") is None


def test_candidate_order_follows_tulu():
    both = r"\boxed{3}. Final Answer: The final answer is $4$. I hope it is correct."
    assert [(c.source, c.answer) for c in extract_candidates(both)] == [("boxed", "3"), ("minerva", "4")]
    # "$...$" is only used when neither boxed nor Minerva exists.
    assert [c.source for c in extract_candidates("thus $x = 3$ done")] == ["dollars"]
    assert extract_candidates("thus $x = 3$ done")[0].answer == "3"
    # Raw text last, normalised the Minerva way for the string comparison.
    assert [(c.source, c.answer) for c in extract_candidates("It is 12 feet")] == [("raw", "Itis12")]


# ------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"\frac12", r"\frac{1}{2}"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        ("0.5", r"\frac{1}{2}"),
        ("1/3", r"\frac{1}{3}"),
        (r"\sqrt3", r"\sqrt{3}"),
        ("x = 5", "5"),
        (r"90^\circ", "90"),
        (r"5 \text{ cm}", "5"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (".25", "0.25"),
    ],
)
def test_hendrycks_normalize(raw, expected):
    assert hendrycks_normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"x = \$1,000", "1000"),
        ("12 feet", "12"),
        (r"\text{Monday}", "Monday"),
        (r"\boxed{42}", "42"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\sqrt2", r"\sqrt{2}"),
        ("a mean value", "mevalue"),  # the reference clips "an "/"a " even inside words; kept
        ("is $5$ then", "5"),
    ],
)
def test_minerva_normalize(raw, expected):
    assert minerva_normalize(raw) == expected


# ------------------------------------------------------------------ verification


@pytest.mark.parametrize(
    ("response", "gold", "correct", "source"),
    [
        (r"Thus \boxed{\frac{1}{2}}.", "0.5", True, "boxed"),
        (r"Thus \boxed{\dfrac{2}{4}}.", r"\frac{1}{2}", True, "boxed"),
        (r"\boxed{x^2+2x+1}", "(x+1)^2", True, "boxed"),
        (r"\boxed{3}", "4", False, None),
        ("Final Answer: The final answer is $\\sqrt{2}$. I hope it is correct.", r"\sqrt2", True, "minerva"),
        (r"so $x = 10$ works", "10", True, "dollars"),
        # Raw text: the whole response is the answer (open-instruct flex), never a number in prose.
        ("10", "10", True, "raw"),
        ("x = 10 cm", "10", True, "raw"),
        ("The answer is 10", "10", False, None),
        (r"\boxed{\text{(C)}}", r"\text{(C)}", True, "boxed"),
        (r"\boxed{18.90}", r"\$18.90", True, "boxed"),
        (r"\boxed{3} Final Answer: The final answer is 4. I hope it is correct.", "4", True, "minerva"),
    ],
)
def test_verify_math(response, gold, correct, source):
    result = verify_math(response, gold)
    assert result.score == float(correct)
    assert (result.details["matched"] or {}).get("source") == source


def test_string_match_path_is_used_when_math_verify_cannot_parse():
    result = verify_math(r"\boxed{\text{east}}", r"\text{east}")
    assert result.score == 1.0


def test_divide_by_zero_is_never_correct():
    assert verify_math(r"\boxed{\frac{1}{0}}", "1").score == 0.0
    assert verify_math(r"\boxed{\frac{1}{0}}", r"\infty").score == 0.0


def test_unbalanced_box_does_not_fall_back_to_numbers_in_text():
    assert verify_math(r"\boxed{3", "3").score == 0.0


# ------------------------------------------------------------------ hostile inputs (sandboxed)

HOSTILE_LIMIT_S = 3.0


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{9^{9^{9^9}}}", "5"),
        (r"\boxed{10^{10^{10}}!}", "5"),
        (r"\boxed{\frac{1}{0}}", "2"),
        ("\\boxed{" * 2000 + "1", "2"),
        ("x " * 100_000 + "$" * 5000 + "{" * 5000, "2"),  # ~215 KB
        ("Final Answer: The final answer is " + "$a" * 50_000, "2"),
    ],
    ids=["tower", "factorial", "div0", "unbalanced", "200KB", "minerva-200KB"],
)
def test_hostile_inputs_return_false_within_the_limit(response, gold):
    result = verify_sample(response, gold, "math", time_limit=HOSTILE_LIMIT_S)
    assert result.score == 0.0


def test_large_output_with_correct_answer_at_the_end_still_verifies():
    response = "blah " * 40_000 + r"so \boxed{17}"
    assert verify_sample(response, "17", "math", time_limit=HOSTILE_LIMIT_S).score == 1.0


def test_timeout_is_reported_in_details():
    result = verify_sample(r"\boxed{9^{9^{9^9}}}", "5", "math", time_limit=0.5)
    assert result.score == 0.0
    assert result.details.get("error") == "timeout"
