"""IFEval verifier: ground-truth formats, strict vs loose, fraction vs all-pass."""

import json

import pytest

from megatron_tulu.rewards import verify_sample
from megatron_tulu.rewards.ifeval import check_instructions, loose_variants, parse_ground_truth, verify_ifeval
from megatron_tulu.rewards.registry import InvalidGroundTruthError

GT = {
    "instruction_id_list": ["punctuation:no_comma", "startend:quotation", "keywords:existence"],
    "kwargs": [{}, {}, {"keywords": ["rain"]}],
}


def test_ground_truth_as_dict_or_json_string():
    assert parse_ground_truth(GT) == parse_ground_truth(json.dumps(GT))
    assert verify_ifeval('"Rain falls"', json.dumps(GT)).score == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        {"kwargs": []},
        {"instruction_id_list": []},
        {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]},
        {"instruction_id_list": ["no:such_instruction"], "kwargs": [{}]},
        [1, 2],
    ],
)
def test_malformed_ground_truth_is_rejected(bad):
    with pytest.raises(InvalidGroundTruthError):
        parse_ground_truth(bad)


def test_fraction_and_all_rewards():
    response = '"Rain, rain"'  # quotation ok, keyword ok, comma present
    fraction = verify_ifeval(response, GT)
    assert fraction.score == pytest.approx(2 / 3)
    assert [i["followed"] for i in fraction.details["instructions"]] == [False, True, True]
    assert verify_ifeval(response, GT, reward="all").score == 0.0
    assert verify_ifeval('"Rain"', GT, reward="all").score == 1.0


def test_loose_variants_are_the_references_eight():
    variants = loose_variants("Sure!\n*Body* text\nBye")
    assert variants == [
        "Sure!\n*Body* text\nBye",
        "*Body* text\nBye",
        "Sure!\n*Body* text",
        "*Body* text",
        "Sure!\nBody text\nBye",
        "Body text\nBye",
        "Sure!\nBody text",
        "Body text",
    ]


def test_strict_vs_loose():
    gt = {"instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    response = 'Here is my answer:\n"A quoted reply"'
    assert check_instructions(response, gt, mode="strict") == [("startend:quotation", False)]
    assert check_instructions(response, gt, mode="loose") == [
        ("startend:quotation", True)
    ]  # first line dropped
    bold_title = {"instruction_id_list": ["detectable_format:title"], "kwargs": [{}]}
    assert check_instructions("**<<Title>>**", bold_title, mode="strict") == [
        ("detectable_format:title", True)
    ]
    no_bold = {
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"num_words": 2, "relation": "less than"}],
    }
    assert check_instructions("Sure:\nYes", no_bold, mode="strict")[0][1] is False
    assert check_instructions("Sure:\nYes", no_bold, mode="loose")[0][1] is True


def test_empty_response_follows_nothing():
    gt = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert verify_ifeval("   ", gt).score == 0.0
    assert verify_ifeval("   ", gt, mode="loose").score == 0.0


def test_repeat_prompt_uses_sample_prompt_when_kwarg_missing():
    gt = {"instruction_id_list": ["combination:repeat_prompt"], "kwargs": [{}]}
    assert verify_ifeval("Tell me a joke. Why did...", gt, prompt="Tell me a joke.").score == 1.0
    assert verify_ifeval("Why did...", gt, prompt="Tell me a joke.").score == 0.0


# Hand-made full samples in the style of the IFEval benchmark, with verdicts derived from the
# reference semantics: (response, ground truth, strict per-instruction verdicts, loose verdicts).
HAND_MADE = [
    (
        "SECTION 1\nRoses grow.\nSECTION 2\nThey bloom. P.S. water them.",
        {
            "instruction_id_list": ["detectable_format:multiple_sections", "detectable_content:postscript"],
            "kwargs": [{"section_spliter": "SECTION", "num_sections": 2}, {"postscript_marker": "P.S."}],
        },
        [True, True],
        [True, True],
    ),
    (
        "Of course! Here is the list:\n* apples\n* pears",
        {
            "instruction_id_list": ["detectable_format:number_bullet_lists", "punctuation:no_comma"],
            "kwargs": [{"num_bullets": 2}, {}],
        },
        [True, True],
        [True, True],
    ),
    (
        "Sure, here you go.\nall lowercase words here\nHope that helps",
        {
            "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
            "kwargs": [{}, {}],
        },
        [False, False],
        [True, True],  # dropping first and last lines leaves a lowercase, comma-free line
    ),
    (
        "The cat sat. The cat ran. A dog barked.",
        {
            "instruction_id_list": ["keywords:frequency", "length_constraints:number_sentences"],
            "kwargs": [
                {"keyword": "cat", "frequency": 2, "relation": "at least"},
                {"num_sentences": 3, "relation": "less than"},
            ],
        },
        [True, False],
        [True, False],
    ),
]


@pytest.mark.parametrize(("response", "gt", "strict", "loose"), HAND_MADE)
def test_hand_made_samples(response, gt, strict, loose):
    assert [ok for _, ok in check_instructions(response, gt, mode="strict")] == strict
    assert [ok for _, ok in check_instructions(response, gt, mode="loose")] == loose


def test_options_reach_the_verifier_through_the_sandbox():
    gt = {"instruction_id_list": ["startend:quotation", "punctuation:no_comma"], "kwargs": [{}, {}]}
    response = 'Answer:\n"yes, indeed"'
    strict = verify_sample(response, gt, "IFEval", time_limit=10)
    loose = verify_sample(
        response, gt, "ifeval", time_limit=10, verifier_options={"ifeval": {"mode": "loose"}}
    )
    assert strict.score == 0.0
    assert loose.score == 1.0  # no_comma: the "last line removed" variant "Answer:" has none
