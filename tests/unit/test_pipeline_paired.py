"""The pipeline's paired sign test between stages' held-out verdicts."""

from __future__ import annotations

import pytest

from megatron_tulu.algorithms.pipeline import paired_sign_test


def test_counts_flips_and_exact_two_sided_p_value() -> None:
    before = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 5
    after = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 5
    test = paired_sign_test(before, after)
    assert (test["fixed"], test["broken"], test["net"]) == (8, 2, 6)
    # P(X <= 2) for X ~ Binomial(10, 1/2) is (1 + 10 + 45) / 1024; two-sided doubles it
    assert test["p_value"] == pytest.approx(2 * 56 / 1024)


def test_balanced_or_no_flips_is_not_evidence() -> None:
    assert paired_sign_test([True, False, True, False], [False, True, True, False])["p_value"] == 1.0
    assert paired_sign_test([True, False], [True, False]) == {
        "fixed": 0,
        "broken": 0,
        "net": 0,
        "p_value": 1.0,
    }


def test_one_sided_sweep_is_significant() -> None:
    test = paired_sign_test([False] * 12, [True] * 12)
    assert test["net"] == 12 and test["p_value"] == pytest.approx(2 / 2**12)


def test_refuses_unpaired_verdicts() -> None:
    with pytest.raises(ValueError, match="same prompts: 3 vs 2"):
        paired_sign_test([True, False, True], [True, False])
