"""The synthetic data's own answer checker, on the verifiers of ``megatron_tulu.rewards``.

``response_is_correct(dataset, response, ground_truth)`` scores a reply to a synthetic row: GSM8K
rows with the training verifier (``rewards.gsm8k``: the last number, thousands separators
dropped, equals the ground truth), IFEval rows with the IFEval instruction checks of
``rewards.ifeval`` in strict mode, every instruction followed. One deliberate difference: the two
``change_case:english_*`` rules check the case only. ``rewards`` also requires the response to be
detected as English, as IFEval does, and langdetect reads about one all-capital English sentence in
eight as another language ("A LIBRARY IS A QUIET PLACE FULL OF BOOKS."), so a correctly capitalised
reply would count as wrong. The generator (``data/synthetic_tasks.py``) checks every chosen and
rejected reply with :func:`check_ifeval` as it makes them.
"""

from __future__ import annotations

import json
from typing import Any

from megatron_tulu.rewards.gsm8k import verify_gsm8k
from megatron_tulu.rewards.ifeval import INSTRUCTIONS, validate_instruction  # all 25 checks registered

# instruction id -> the case test that replaces the rewards check (which adds language detection)
_CASE_ONLY = {"change_case:english_lowercase": str.islower, "change_case:english_capital": str.isupper}


def _followed(response: str, instruction_id: str, kwargs: dict[str, Any]) -> bool:
    if instruction_id in _CASE_ONLY:
        return _CASE_ONLY[instruction_id](response)
    return INSTRUCTIONS[instruction_id].check(response, **kwargs)


def check_ifeval(response: str, instruction_id_list: Any, kwargs: Any) -> bool:
    """True when ``response`` follows every instruction (strict IFEval; case rules without language
    detection). An unknown instruction id or bad kwargs raise ``InvalidGroundTruthError``."""
    return all(
        _followed(response, iid, validate_instruction(iid, kw or {}))
        for iid, kw in zip(instruction_id_list, kwargs)
    )


def response_is_correct(dataset: str, response: str, ground_truth: str) -> bool:
    """Whether ``response`` answers a synthetic row of ``dataset`` ("gsm8k" or "ifeval") correctly."""
    if dataset == "gsm8k":
        return verify_gsm8k(response, ground_truth).score == 1.0
    if dataset == "ifeval":
        gt = json.loads(ground_truth)
        return check_ifeval(response, gt["instruction_id_list"], gt["kwargs"])
    raise ValueError(f"unknown dataset {dataset!r}")
