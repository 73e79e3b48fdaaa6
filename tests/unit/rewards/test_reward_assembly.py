"""Reward assembly, the verifier registry and the sandbox's hard time limit."""

import os
import threading
import time

import pytest

from megatron_tulu.rewards import (
    UnknownDatasetError,
    VerifierResult,
    compute_rewards,
    register_verifier,
    registered_datasets,
    score_sample,
    unregister_verifier,
    verify_sample,
)
from megatron_tulu.rewards.registry import get_verifier


def test_alpha_and_no_eos_penalty():
    right = score_sample("It is 4.", "4", "gsm8k", finish_reason="stop")
    wrong = score_sample("It is 5.", "4", "gsm8k", finish_reason="stop")
    truncated = score_sample("It is 4.", "4", "gsm8k", finish_reason="length")
    custom = score_sample("It is 4.", "4", "gsm8k", alpha=1.0)
    assert (right.reward, wrong.reward, truncated.reward, custom.reward) == (10.0, 0.0, -10.0, 1.0)
    assert truncated.score == 1.0 and not truncated.stopped_at_eos  # verdict still reported
    assert score_sample("x", "4", "gsm8k", finish_reason="length", no_eos_penalty=-3.0).reward == -3.0
    assert score_sample("It is 4.", "4", "gsm8k", finish_reason=None).reward == 10.0  # unknown = stop


@pytest.mark.parametrize("name", ["gsm8k", "GSM8K", "MATH", "math", "ifeval", "IFEval", " Math "])
def test_dataset_names_are_case_insensitive(name):
    assert get_verifier(name).name in {"gsm8k", "math", "ifeval"}


def test_unknown_dataset_error_names_it_and_lists_registered():
    with pytest.raises(UnknownDatasetError) as err:
        score_sample("x", "1", "mbpp")
    message = str(err.value)
    assert "'mbpp'" in message and "gsm8k" in message and "ifeval" in message and "math" in message


def test_registry_extension_in_a_few_lines():
    @register_verifier("exact_match_test", aliases=("em_test",))
    def exact(response, ground_truth, prompt):
        return VerifierResult(float(response.strip() == ground_truth), {"prompt_len": len(prompt)})

    try:
        assert "exact_match_test" in registered_datasets()
        result = score_sample(" yes ", "yes", "EM_TEST", prompt="abc")
        assert (result.reward, result.dataset, result.details) == (
            10.0,
            "exact_match_test",
            {"prompt_len": 3},
        )
        assert score_sample("no", "yes", "exact_match_test").reward == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register_verifier("exact_match_test")(exact)
    finally:
        unregister_verifier("exact_match_test")
    with pytest.raises(UnknownDatasetError):
        get_verifier("em_test")


def _sleep_forever(response, ground_truth, prompt):
    time.sleep(3600)
    return VerifierResult(1.0)


def _crash(response, ground_truth, prompt):
    os._exit(3)


def _raise(response, ground_truth, prompt):
    raise RuntimeError("verifier bug")


@pytest.fixture
def misbehaving_verifiers():
    register_verifier("sleepy_test")(_sleep_forever)
    register_verifier("crashy_test")(_crash)
    register_verifier("buggy_test")(_raise)
    yield
    for name in ("sleepy_test", "crashy_test", "buggy_test"):
        unregister_verifier(name)


def test_hard_time_limit_from_main_thread(misbehaving_verifiers):
    result = verify_sample("x", "y", "sleepy_test", time_limit=0.3)
    assert (result.score, result.details["error"]) == (0.0, "timeout")
    assert verify_sample("It is 4", "4", "gsm8k", time_limit=5).score == 1.0  # a fresh worker takes over


def test_hard_time_limit_off_the_main_thread(misbehaving_verifiers):
    results = {}

    def worker():
        results["slow"] = verify_sample("x", "y", "sleepy_test", time_limit=0.3)
        results["ok"] = verify_sample("It is 4", "4", "gsm8k", time_limit=5)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=60)
    assert results["slow"].details["error"] == "timeout"
    assert results["ok"].score == 1.0


def test_crash_and_exception_score_zero_with_reason(misbehaving_verifiers):
    crashed = verify_sample("x", "y", "crashy_test", time_limit=5)
    assert crashed.score == 0.0 and "crashed" in crashed.details["error"]
    buggy = verify_sample("x", "y", "buggy_test", time_limit=5)
    assert buggy.score == 0.0 and "RuntimeError: verifier bug" in buggy.details["error"]
    inline = verify_sample("x", "y", "buggy_test", time_limit=None)
    assert inline.score == 0.0 and "verifier bug" in inline.details["error"]


def test_compute_rewards_batch_in_order_with_workers(misbehaving_verifiers):
    samples = [{"response": f"so {i}", "ground_truth": str(i % 7), "dataset": "gsm8k"} for i in range(40)]
    samples.append({"response": "x", "ground_truth": "y", "dataset": "sleepy_test"})
    samples.append(
        {"response": r"\boxed{2}", "ground_truth": "2", "dataset": "MATH", "finish_reason": "length"}
    )
    done = []
    results = compute_rewards(samples, workers=2, time_limit=1.0, on_done=done.append)
    assert [r.reward for r in results[:40]] == [10.0 if i < 7 else 0.0 for i in range(40)]
    assert results[40].details["error"] == "timeout"
    assert (results[41].reward, results[41].score) == (-10.0, 1.0)
    assert sorted(done) == list(range(42))


def test_compute_rewards_rejects_unknown_dataset_before_work():
    with pytest.raises(UnknownDatasetError):
        compute_rewards(
            [
                {"response": "1", "ground_truth": "1", "dataset": "gsm8k"},
                {"response": "", "ground_truth": "", "dataset": "?"},
            ]
        )
