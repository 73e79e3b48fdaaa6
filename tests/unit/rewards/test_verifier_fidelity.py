"""Issue 13 verifier fixes: MATH reward hacking, thinking sections, open-instruct's GSM8K rule."""

from __future__ import annotations

import json

import pytest

from megatron_tulu.commands.verify import main as verify_main
from megatron_tulu.rewards import compute_rewards, verify_sample
from megatron_tulu.rewards.gsm8k import verify_gsm8k
from megatron_tulu.rewards.math_verifier import verify_math
from megatron_tulu.rewards.thinking import open_instruct_answer, strip_thinking

# ------------------------------------------------------------------ MATH raw-text rule


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("I think it is 3 or maybe 5", "5"),
        ("1 2 3 4 5 6 7 8 9 10", "10"),
        ("1 2 3 4 5 6 7 8 9 10", "55"),  # math-verify would read the list as a sum
        ("The answer is 5", "5"),
        ("5 or 6", "6"),
    ],
)
def test_numbers_inside_prose_never_score(response, gold):
    assert verify_math(response, gold).score == 0.0


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("5", "5"),
        ("5.", "5"),
        ("x = 5", "5"),
        ("5 cm", "5"),
        ("3/4", r"\frac{3}{4}"),
        (r"\frac{3}{4}", "0.75"),
    ],
)
def test_a_response_that_is_just_the_answer_still_scores(response, gold):
    assert verify_math(response, gold).score == 1.0


def test_undefined_gold_has_no_correct_answer():
    for response in (r"\boxed{\frac{1}{0}}", r"\frac{1}{0}", r"$\frac{1}{0}$", r"\boxed{\infty}"):
        result = verify_math(response, r"\frac{1}{0}")
        assert result.score == 0.0 and result.details["error"] == "gold answer is undefined"


def test_undefined_prediction_is_not_rescued_by_the_string_check():
    assert verify_math(r"\boxed{\frac{1}{0}}", "1").score == 0.0


# ------------------------------------------------------------------ thinking sections


def test_strip_thinking_rules():
    assert strip_thinking("<think>it is 3</think> The answer is 5") == "The answer is 5"
    assert strip_thinking("<think>a</think>x<think>b</think>y") == "y"
    assert strip_thinking("<think>never closed 5") == ""
    assert strip_thinking("<think>t</think> chatter <answer>42</answer> more") == "42"
    assert strip_thinking("plain answer") == "plain answer"
    assert strip_thinking("stray </answer> tag <answer>") == "stray  tag"


def test_open_instruct_answer_rule():
    assert open_instruct_answer("<|assistant|> <think>t</think> <answer>42</answer> ") == "42"
    assert open_instruct_answer("<think>never closed 5") == "<think>never closed 5"
    assert open_instruct_answer("a <answer>1</answer> b") == "a 1 b"


@pytest.mark.parametrize(
    ("dataset", "gold", "thinking", "answer"),
    [
        ("gsm8k", "12", "maybe 3 then 12, no wait 7", "The total is 12"),
        (
            "math",
            "12",
            "Final Answer: The final answer is 7. I hope it is correct.",  # the first Minerva line counts
            "Final Answer: The final answer is 12. I hope it is correct.",
        ),
        (
            "ifeval",
            json.dumps({"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}),
            "Let Me Think",
            "all lowercase",
        ),
    ],
)
def test_strip_thinking_option_for_every_verifier(dataset, gold, thinking, answer):
    # The thinking section carries a wrong answer (or breaks the constraint): scored as is the
    # response fails; with strip_thinking only the answer is verified and it passes.
    response = f"<think>{thinking}</think>\n{answer}"
    if dataset == "gsm8k":
        response = f"{answer}<think>{thinking}</think>"  # the last number sits inside the thinking
    else:
        assert verify_sample(response, gold, dataset, time_limit=None).score == 0.0
    if dataset == "gsm8k":
        assert verify_sample(response, gold, dataset, time_limit=None).score == 0.0
        response = f"<think>{thinking}</think>{answer}"
    assert verify_sample(response, gold, dataset, time_limit=None, strip_thinking=True).score == 1.0


def test_strip_thinking_in_compute_rewards():
    samples = [{"response": "<think>5</think>7", "ground_truth": "5", "dataset": "gsm8k"}]
    assert compute_rewards(samples, workers=1, time_limit=None)[0].score == 0.0
    samples[0]["response"] = "7<think>6</think>5"
    assert compute_rewards(samples, workers=1, time_limit=None, strip_thinking=True)[0].score == 1.0


# ------------------------------------------------------------------ GSM8K rules

# (response, gold, numeric, open-instruct, tulu3): open-instruct's verdicts worked out by hand
# from its GSM8KVerifier (join digit,digit; last [-+]?(?:\d*\.\d+|\d+); lower-cased string ==).
GSM8K_CASES = [
    ("So the answer is 72.", "72", 1, 1, 1),
    ("It costs $1,234 in total", "1234", 1, 1, 1),
    ("It is -5", "-5", 1, 1, 0),  # the release's regex signs decimals only
    ("It is -2.5", "-2.5", 1, 1, 1),
    ("It is 5.0", "5", 1, 0, 0),  # string comparison
    ("It is 5", "5.0", 1, 0, 0),
    ("Between 1,2,3 we pick 3", "3", 1, 1, 1),  # "1,2,3" joins to "123" only before the last 3
    ("1,2,3", "3", 1, 1, 1),  # the join does not overlap: "12,3", last number "3"
    ("1,234,567", "1234567", 1, 1, 1),  # "1,2" -> "12", then "4,5" -> "45": all joined
    ("5-3 = 2", "2", 1, 1, 1),
    ("x = 5-3", "3", 1, 0, 1),  # open-instruct takes "-3"; the release's regex "3"
    ("no digits here", "NO DIGITS HERE", 1, 1, 1),  # whole response, lower-cased
    ("The answer: 8 ", "8", 1, 1, 1),
    ("#### 72", "#### 72", 1, 0, 0),  # gold as given, "####" kept upstream
]


@pytest.mark.parametrize(("response", "gold", "numeric", "oi", "tulu3"), GSM8K_CASES)
def test_gsm8k_rules(response, gold, numeric, oi, tulu3):
    assert verify_gsm8k(response, gold).score == numeric
    assert verify_gsm8k(response, gold, rule="open-instruct").score == oi
    assert verify_gsm8k(response, gold, rule="tulu3").score == tulu3


def test_unknown_gsm8k_rule_is_an_error():
    with pytest.raises(ValueError, match="rule"):
        verify_gsm8k("1", "1", rule="loose")


def test_verify_cli_gsm8k_rule_open_instruct(tmp_path, capsys):
    rows = [{"prompt": "q", "response": r, "ground_truth": g, "dataset": "gsm8k"} for r, g, *_ in GSM8K_CASES]
    source = tmp_path / "gens.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for rule, column in (("open-instruct", 3), ("numeric", 2)):
        out = tmp_path / f"{rule}.jsonl"
        args = ["--input", str(source), "--output", str(out), "--workers", "1", "--gsm8k-rule", rule]
        assert verify_main(args) == 0
        scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
        assert scores == [float(case[column]) for case in GSM8K_CASES]
    capsys.readouterr()


def test_verify_cli_strip_thinking_flag(tmp_path, capsys):
    row = {
        "prompt": "q",
        "response": "<answer>5</answer> (check: 5 + 1 = 6)",
        "ground_truth": "5",
        "dataset": "gsm8k",
    }
    row_thinking_only = {**row, "response": "<think>it is 5"}  # never closed: no answer
    source = tmp_path / "gens.jsonl"
    source.write_text(json.dumps(row) + "\n" + json.dumps(row_thinking_only) + "\n")
    scores = {}
    for flag in ([], ["--strip-thinking"]):
        out = tmp_path / f"out{len(flag)}.jsonl"
        assert verify_main(["--input", str(source), "--output", str(out), "--workers", "1", *flag]) == 0
        scores[bool(flag)] = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    assert scores == {False: [0.0, 1.0], True: [1.0, 0.0]}
    capsys.readouterr()
