"""Per-dataset prompt weights."""

from __future__ import annotations

import pytest

from megatron_tulu.data.mixing import apply_dataset_weights

ROWS = [{"dataset": "gsm8k", "i": i} for i in range(4)] + [{"dataset": "ifeval", "i": i} for i in range(3)]


def _ids(rows):
    return [(r["dataset"], r["i"]) for r in rows]


def test_no_weights_keeps_rows_and_order() -> None:
    rows, report = apply_dataset_weights(ROWS, None)
    assert rows == ROWS and report == {"gsm8k": (4, 4), "ifeval": (3, 3)}


def test_fraction_keeps_the_first_rows_of_that_dataset_only() -> None:
    rows, report = apply_dataset_weights(ROWS, {"gsm8k": 0.5})
    assert _ids(rows) == [("gsm8k", 0), ("gsm8k", 1), ("ifeval", 0), ("ifeval", 1), ("ifeval", 2)]
    assert report == {"gsm8k": (4, 2), "ifeval": (3, 3)}


def test_weight_above_one_repeats_rows_and_zero_drops_the_dataset() -> None:
    rows, report = apply_dataset_weights(ROWS, {"ifeval": 2.0, "gsm8k": 0})
    assert _ids(rows) == [("ifeval", i) for i in (0, 1, 2, 0, 1, 2)]
    assert report == {"gsm8k": (4, 0), "ifeval": (3, 6)}


def test_unknown_dataset_or_negative_weight_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['ifevl'\].*not in the data"):
        apply_dataset_weights(ROWS, {"ifevl": 1.0})
    with pytest.raises(ValueError, match="numbers >= 0"):
        apply_dataset_weights(ROWS, {"gsm8k": -1})


def test_empty_data_stays_empty_for_the_caller_to_report() -> None:
    assert apply_dataset_weights([], None) == ([], {})
