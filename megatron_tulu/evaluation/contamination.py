"""Decontamination inside the evaluation: which eval items a training set already contains.

Tülu 3's instance rule (§3.2), the same code as ``megatron-tulu decontaminate``
(:class:`megatron_tulu.rewards.ngram_overlap.EvalIndex`): an eval item is contaminated by a
training set when one training prompt covers more than ``threshold`` (50%) of the item's tokens
with shared 8-grams. Only prompts are compared: the item's question (never the few-shot
exemplars the evaluation adds) against each training row's user turns (or its
prompt/question/problem/instruction field). The report gives, per task and training set, the
contaminated share; the eval command also scores the clean subset (items no set contains).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from megatron_tulu.evaluation.tasks import EvalItem, TaskFileError


def _names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path)).removesuffix(".jsonl").removesuffix(".json")
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def contamination_report(
    tasks: dict[str, Sequence[EvalItem]],
    train_paths: Sequence[str],
    *,
    ngram: int = 8,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Per training set and task: rows read, contaminated item indices and their share.

    ``contaminated`` (top level) maps each task to the union over training sets, the items to
    leave out for clean-subset scores. Raises TaskFileError naming file:line for an unreadable row.
    """
    from megatron_tulu.data.decontaminate import DEFAULT_FIELDS, InputError, iter_rows
    from megatron_tulu.rewards.ngram_overlap import EvalIndex

    index = EvalIndex(ngram)
    owners: list[tuple[str, int]] = []
    for task, items in tasks.items():
        for item in items:
            index.add(task, f"{task}:{item.index}", item.question)
            owners.append((task, item.index))
    report: dict[str, Any] = {
        "rule": f"{ngram}-gram overlap on prompts; an item is contaminated when one training prompt "
        f"covers > {threshold:.0%} of its tokens",
        "ngram": ngram,
        "threshold": threshold,
        "items_too_short_to_match": index.too_short,
        "train": {},
    }
    union: dict[str, set[int]] = {task: set() for task in tasks}
    for name, path in zip(_names(train_paths), train_paths):
        hits: dict[str, set[int]] = {task: set() for task in tasks}
        rows = 0
        try:
            for row in iter_rows(path, DEFAULT_FIELDS):
                rows += 1
                for overlap in index.overlaps(row.prompt, threshold):
                    task, item_index = owners[overlap.instance_index]
                    hits[task].add(item_index)
        except InputError as exc:
            raise TaskFileError(str(exc)) from None
        except OSError as exc:
            raise TaskFileError(f"{path}: cannot read training file: {exc}") from None
        report["train"][name] = {
            "path": str(path),
            "rows": rows,
            "tasks": {
                task: {
                    "contaminated": len(hits[task]),
                    "n": len(tasks[task]),
                    "share": len(hits[task]) / len(tasks[task]) if tasks[task] else 0.0,
                    "items": sorted(hits[task]),
                }
                for task in tasks
            },
        }
        for task in tasks:
            union[task] |= hits[task]
    report["contaminated"] = {task: sorted(v) for task, v in union.items()}
    return report


def format_contamination(report: dict[str, Any]) -> str:
    header = f"{'training set':<28} {'task':<14} {'contaminated':>13} {'share':>8}"
    lines = [f"contamination ({report['rule']})", header, "-" * len(header)]
    for name, entry in report["train"].items():
        for task, t in entry["tasks"].items():
            lines.append(
                f"{name:<28} {task:<14} {t['contaminated']:>6}/{t['n']:<6} {100 * t['share']:>7.1f}%"
            )
    return "\n".join(lines)
