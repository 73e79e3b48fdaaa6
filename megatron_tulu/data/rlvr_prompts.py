"""RLVR prompts: Tülu 3's released RLVR rows -> tokenized prompts with their ground truths.

Rows are read from JSONL, a parquet file, or a dataset folder (``save_to_disk`` or the hub parquet
layout; see ``io.read_rows``) in the schema of allenai/RLVR-GSM-MATH-IF-Mixed-Constraints and
RLVR-IFeval::

    {"messages": [{"role": "user", "content": ...}], "ground_truth": "<str>",
     "dataset": "gsm8k" | "MATH" | "ifeval", "constraint_type": ..., "constraint": ...}

(extra keys such as ``id``, ``constraint_type`` and ``constraint`` are carried by the data but not
needed here). ``dataset`` is matched case-insensitively against the verifier registry, as at
scoring time, so a typo fails before any rollout instead of at the first reward. Each row's ground
truth is checked by its verifier's validator (an IF ``func_name`` that does not exist, an empty
GSM8K answer): a row that can never be scored is a data bug, reported with its file and line, or
counted with ``skip_bad=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from megatron_tulu.data.chat_template import render_tulu
from megatron_tulu.data.io import MISSING_FIELD, WRONG_TYPE, PathLike, RowError, SkipReport, check_messages
from megatron_tulu.data.loading import parse_rows

LAST_NOT_USER = "last_not_user"
UNKNOWN_DATASET = "unknown_dataset"
BAD_GROUND_TRUTH = "bad_ground_truth"


def parse_rlvr_row(row: dict[str, Any]) -> tuple[list[dict[str, str]], Any, str]:
    """``(messages, ground_truth, dataset)`` of one RLVR row, or ``RowError``."""
    from megatron_tulu.rewards.registry import InvalidGroundTruthError, UnknownDatasetError, get_verifier

    for key in ("messages", "ground_truth", "dataset"):
        if key not in row or row[key] is None:
            raise RowError(MISSING_FIELD, f"RLVR row has no {key!r} field")
    messages = check_messages(row["messages"], require_assistant=False)
    if messages[-1]["role"] != "user":
        raise RowError(
            LAST_NOT_USER, f"messages must end with the user turn to answer, ends with {messages[-1]['role']}"
        )
    dataset = row["dataset"]
    if not isinstance(dataset, str) or not dataset.strip():
        raise RowError(WRONG_TYPE, f"'dataset' must be a non-empty string, got {dataset!r}")
    try:
        verifier = get_verifier(dataset)
    except UnknownDatasetError as exc:
        raise RowError(UNKNOWN_DATASET, str(exc)) from None
    if verifier.validate is not None:
        try:
            verifier.validate(row["ground_truth"])
        except InvalidGroundTruthError as exc:
            raise RowError(BAD_GROUND_TRUTH, f"ground_truth for {dataset!r}: {exc}") from None
    return messages, row["ground_truth"], dataset


def load_rlvr_prompts(
    files: PathLike | Sequence[PathLike],
    tokenizer: Any,
    max_prompt_len: int,
    skip_bad: bool = False,
    skip: SkipReport | None = None,
) -> list[dict[str, Any]]:
    """Prompt dicts ``{ids, ground_truth, dataset, prompt}`` for the RLVR trainer.

    ``ids`` are the Tülu-template prompt tokens (generation prompt included), truncated from the
    left to ``max_prompt_len`` (the question's end, next to the answer, is kept); ``prompt`` is the
    last user turn (IF verifiers such as repeat-the-prompt read it). Bad rows raise ``DataError``
    naming file and line, or with ``skip_bad=True`` are counted in ``skip`` (a fresh report when
    None); a file whose rows are all bad is an error either way.
    """
    if max_prompt_len <= 0:
        raise ValueError(f"max_prompt_len must be positive, got {max_prompt_len}")
    report = (skip if skip is not None else SkipReport()) if skip_bad else None
    prompts: list[dict[str, Any]] = []
    for row in parse_rows(files, parse_rlvr_row, report):
        messages, ground_truth, dataset = row.value
        text = render_tulu(messages, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_len:]
        prompts.append(
            {"ids": ids, "ground_truth": ground_truth, "dataset": dataset, "prompt": messages[-1]["content"]}
        )
    return prompts
