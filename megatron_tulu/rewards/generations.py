"""JSONL files of generations for the verifiable rewards: read and validate them, write scored
rows atomically, and summarize accuracy per dataset (``megatron-tulu verify``,
:mod:`megatron_tulu.commands.verify`).

Input rows: `{"prompt": str, "response": str, "ground_truth": ..., "dataset": str,
"finish_reason": str | null (optional)}`. Rows are held in memory (generation files are small
next to RAM). Every row is validated before any scoring starts, so a malformed file fails fast
with its file and line number (or, with ``skip_bad``, the bad rows are counted, listed and left
out). Output files are written to a temporary file next to the destination and renamed into
place, so an interrupted run never leaves a partial file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from megatron_tulu.jsonl import JsonlLineError, jsonl_lines
from megatron_tulu.rewards.registry import InvalidGroundTruthError, UnknownDatasetError, get_verifier
from megatron_tulu.rewards.types import RewardResult

_STRING_FIELDS = ("prompt", "response", "dataset")


class MalformedRowError(ValueError):
    """A row that cannot be scored; the message names the file and line."""


@dataclass
class LoadedRows:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def _check_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for name in _STRING_FIELDS:
        if name not in row:
            raise ValueError(f"missing field {name!r}")
        if not isinstance(row[name], str):
            raise ValueError(f"field {name!r} must be a string, got {type(row[name]).__name__}")
    if row.get("ground_truth") is None:
        raise ValueError("missing field 'ground_truth'")
    finish_reason = row.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise ValueError(
            f"field 'finish_reason' must be a string or null, got {type(finish_reason).__name__}"
        )
    verifier = get_verifier(row["dataset"])  # UnknownDatasetError names the registered ones
    if verifier.validate is not None:
        verifier.validate(row["ground_truth"])


def load_rows(path: str, skip_bad: bool) -> LoadedRows:
    """Read and validate every row; raise MalformedRowError on the first bad one unless `skip_bad`."""
    loaded = LoadedRows()
    for line_number, _, row in jsonl_lines(path):
        try:
            if isinstance(row, JsonlLineError):
                raise row
            _check_row(row)
        except (ValueError, UnknownDatasetError, InvalidGroundTruthError) as exc:
            if not skip_bad:
                raise MalformedRowError(f"{path}:{line_number}: {exc}") from None
            loaded.skipped.append((line_number, str(exc)))
            continue
        loaded.rows.append(row)
    return loaded


def current_umask() -> int:
    """The process umask (read without changing it: set and restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl_atomically(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as JSONL to a temporary file beside ``path``, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, 0o666 & ~current_umask())  # mkstemp creates 0600
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise


def summarize(results: Sequence[RewardResult]) -> list[dict[str, Any]]:
    """Per-dataset accuracy table rows (plus an "all" row)."""
    groups: dict[str, list[RewardResult]] = defaultdict(list)
    for result in results:
        groups[result.dataset].append(result)
    if len(groups) > 1:
        groups["all"] = list(results)
    table = []
    for name, group in groups.items():
        n = len(group)
        table.append(
            {
                "dataset": name,
                "n": n,
                "accuracy": sum(r.score for r in group) / n,
                "fully_correct": sum(r.score >= 1.0 for r in group) / n,
                "no_eos": sum(not r.stopped_at_eos for r in group),
                "errors": sum("error" in r.details for r in group),
                "mean_reward": sum(r.reward for r in group) / n,
            }
        )
    return table
