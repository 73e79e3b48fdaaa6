"""pass@k / maj@k against brute-force enumeration of k-subsets, and the RLVR metric names."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from megatron_tulu.evaluation.metrics import ks_for, maj_at_k, pass_at_k, rlvr_metrics, task_metrics


def brute_pass(correct: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def brute_maj(answers: list, correct: list[bool], k: int) -> float:
    """Majority vote of every k-subset; ties share the vote; None answers are singletons."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(answers)), k))
    for subset in subsets:
        votes = Counter(answers[i] if answers[i] is not None else ("none", i) for i in subset)
        right = {answers[i] if answers[i] is not None else ("none", i) for i in subset if correct[i]}
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += sum(a in right for a in winners) / len(winners)
    return total / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_equals_brute_force_for_every_pattern(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass(correct, k), abs=1e-12), (n, c, k)


def test_maj_at_k_equals_brute_force_on_saved_samples():
    rng = random.Random(7)
    cases = [
        (["4", "4", "5", None, "4", "5"], [True, True, False, False, True, False]),
        (["1", "2", "2", "1"], [True, False, False, True]),  # ties between the right and a wrong answer
        ([None, None, None], [False, True, False]),  # nothing extracted: each sample votes alone
        (["0.5", "\\frac{1}{2}", "3"], [True, True, False]),  # two spellings of the right answer
    ]
    for _ in range(40):
        n = rng.randint(1, 8)
        answers = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
        cases.append((answers, [a == "a" for a in answers]))
    for answers, correct in cases:
        for k in range(1, len(answers) + 1):
            assert maj_at_k(answers, correct, k) == pytest.approx(
                brute_maj(answers, correct, k), abs=1e-12
            ), (
                answers,
                correct,
                k,
            )


def test_invalid_k_is_refused():
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True], 2)


def _rec(index: int, sample: int, correct: bool, answer=None, dataset="gsm8k", finish="stop", reward=None):
    return {
        "task": "t",
        "index": index,
        "sample": sample,
        "dataset": dataset,
        "correct": correct,
        "score": float(correct),
        "reward": (10.0 if correct else 0.0) if reward is None else reward,
        "answer": answer,
        "finish_reason": finish,
        "num_tokens": 3 + sample,
        "response": "x" if sample else "",
    }


def test_task_metrics_pass_and_maj_equal_brute_force_per_item_mean():
    verdicts = [[True, False, False, True], [False, False, False, False], [True, True, True, False]]
    answers = [["7", "8", "9", "7"], ["1", None, "1", "2"], ["3", "3", "3", "4"]]
    records = [_rec(i, j, ok, answers[i][j]) for i, row in enumerate(verdicts) for j, ok in enumerate(row)]
    m = task_metrics(records)
    assert m["n"] == 3 and m["samples_per_item"] == 4
    assert ks_for(4) == [1, 2, 4]
    for k in (1, 2, 4):
        assert m[f"pass@{k}"] == pytest.approx(sum(brute_pass(v, k) for v in verdicts) / 3)
        assert m[f"maj@{k}"] == pytest.approx(sum(brute_maj(a, v, k) for a, v in zip(answers, verdicts)) / 3)
    assert m["accuracy"] == pytest.approx(m["pass@1"])
    assert m["empty_responses"] == 3  # sample 0 of every item has an empty response


def test_rlvr_metric_names_and_values():
    records = [
        _rec(0, 0, True, dataset="gsm8k"),
        _rec(1, 0, False, dataset="gsm8k", finish="length", reward=-10.0),
        _rec(2, 0, True, dataset="ifeval"),
    ]
    m = rlvr_metrics(records, prefix="eval/")
    assert m == {
        "eval/reward/all": pytest.approx((10 - 10 + 10) / 3),
        "eval/accuracy/all": pytest.approx(2 / 3),
        "eval/reward/gsm8k": pytest.approx(0.0),
        "eval/accuracy/gsm8k": pytest.approx(0.5),
        "eval/reward/ifeval": pytest.approx(10.0),
        "eval/accuracy/ifeval": pytest.approx(1.0),
        "eval/response_length": pytest.approx(3.0),
        "eval/no_eos_share": pytest.approx(1 / 3),
    }


def test_math_macro_accuracy_is_the_mean_over_subjects():
    records = [_rec(i, 0, ok) for i, ok in enumerate([True, False, True, True, False])]
    for r, subject in zip(records, ["Algebra", "Algebra", "Geometry", "Algebra", "Number Theory"]):
        r["subject"] = subject
    m = task_metrics(records)
    assert m["by_subject"] == {"Algebra": pytest.approx(2 / 3), "Geometry": 1.0, "Number Theory": 0.0}
    assert m["macro_accuracy"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
