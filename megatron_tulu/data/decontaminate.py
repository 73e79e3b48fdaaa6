"""Decontamination of training data (Tülu 3 §3.2): 8-gram matching on prompts only, the training
rows read from JSONL, HF datasets saved with `save_to_disk` or parquet (``megatron-tulu
decontaminate``, :mod:`megatron_tulu.commands.decontaminate`; the eval command's contamination
report, :mod:`megatron_tulu.evaluation.contamination`).

A training instance is removed when it covers more than 50% of the tokens of some eval instance
(:class:`megatron_tulu.rewards.ngram_overlap.EvalIndex`, the matching itself). A training dataset
is flagged as contaminated when its instances overlap more than 2% of the instances of any eval
set (:func:`contamination_table`).

The prompt of a row is, by default, the concatenated user turns of `messages`, else `prompt` (a
string, or a messages list), else `question`/`problem`/`instruction` (common eval-set fields).
:func:`decontaminate_file` writes, in its output directory, the kept rows (``<name>.jsonl``, or
``<name>/`` for an HF dataset; parquet input is written as JSONL) and the removed ids
(``<name>.removed_ids.txt``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_tulu.data.io import DataError, _is_save_to_disk, read_rows
from megatron_tulu.jsonl import JsonlLineError, jsonl_lines
from megatron_tulu.rewards.generations import current_umask
from megatron_tulu.rewards.ngram_overlap import EvalIndex

DEFAULT_FIELDS = ("messages", "prompt", "question", "problem", "instruction")


class InputError(ValueError):
    """A row or file that cannot be read; the message names the file and line."""


def extract_prompt(row: Any, fields: Sequence[str]) -> str | None:
    """The prompt text of a row (user turns only for chat rows), or None if it has none."""
    if not isinstance(row, dict):
        return None
    for name in fields:
        value = row.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            turns = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            texts = [t for t in turns if isinstance(t, str)]
            if texts:
                return "\n".join(texts)
    return None


@dataclass
class Row:
    key: str  # row id or file:line
    prompt: str
    raw_line: str | None  # original JSONL line (None for HF datasets)
    index: int  # 0-based row index


def _is_hf_dataset(path: str) -> bool:
    """A folder written by `save_to_disk` (kept rows are written back the same way)."""
    return os.path.isdir(path) and _is_save_to_disk(Path(path))


def _is_parquet(path: str) -> bool:
    """A parquet file, or a folder of parquet shards as the hub stores a dataset."""
    return path.endswith(".parquet") or os.path.isdir(path)


def _iter_parquet_rows(path: str, fields: Sequence[str]) -> Iterator[Row]:
    # Kept rows of parquet input are written as JSONL (`raw_line` is the row as JSON).
    try:
        for index, (location, row) in enumerate(read_rows(path)):
            prompt = extract_prompt(row, fields)
            if prompt is None:
                raise InputError(f"{location}: no prompt found (looked for {', '.join(fields)})")
            key = str(row["id"]) if row.get("id") is not None else location
            yield Row(key, prompt, json.dumps(row, ensure_ascii=False, default=str) + "\n", index)
    except DataError as exc:
        raise InputError(str(exc)) from None


def iter_rows(path: str, fields: Sequence[str]) -> Iterator[Row]:
    if _is_hf_dataset(path):
        yield from _iter_hf_rows(path, fields)
        return
    if _is_parquet(path):
        yield from _iter_parquet_rows(path, fields)
        return
    index = 0
    for line_number, line, row in jsonl_lines(path):
        if isinstance(row, JsonlLineError):
            raise InputError(f"{path}:{line_number}: {row}")
        prompt = extract_prompt(row, fields)
        if prompt is None:
            raise InputError(f"{path}:{line_number}: no prompt found (looked for {', '.join(fields)})")
        key = str(row["id"]) if row.get("id") is not None else f"{path}:{line_number}"
        yield Row(key, prompt, line, index)
        index += 1


def _load_hf(path: str) -> Any:
    import datasets

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        raise InputError(f"{path} is a DatasetDict; pass one split's directory, e.g. {path}/train")
    return dataset


def _iter_hf_rows(path: str, fields: Sequence[str]) -> Iterator[Row]:
    dataset = _load_hf(path)
    columns = [c for c in (*fields, "id") if c in dataset.column_names]
    for index, row in enumerate(dataset.select_columns(columns)):
        prompt = extract_prompt(row, fields)
        if prompt is None:
            raise InputError(f"{path}: row {index}: no prompt found (looked for {', '.join(fields)})")
        key = str(row["id"]) if row.get("id") is not None else f"{path}:{index}"
        yield Row(key, prompt, None, index)


def _dataset_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".jsonl", ".json", ".parquet"):
        base = base.removesuffix(suffix)
    return base


def unique_names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name = candidate = _dataset_name(path)
        counter = 2
        while candidate in names:
            candidate = f"{name}_{counter}"
            counter += 1
        names.append(candidate)
    return names


@dataclass
class TrainReport:
    name: str
    path: str
    rows: int = 0
    removed: int = 0
    overlapped_eval: dict[str, set[int]] = field(default_factory=dict)  # eval set -> instance indices
    removed_rows: list[dict[str, Any]] = field(default_factory=list)


def build_eval_index(
    eval_paths: Sequence[str], fields: Sequence[str], ngram: int
) -> tuple[EvalIndex, dict[str, int]]:
    index = EvalIndex(ngram)
    sizes: dict[str, int] = {}
    for name, path in zip(unique_names(eval_paths), eval_paths):
        count = 0
        for row in iter_rows(path, fields):
            index.add(name, row.key, row.prompt)
            count += 1
        if count == 0:
            # Decontaminating against nothing would report every training set clean.
            raise InputError(f"{path}: evaluation set has no rows; nothing to decontaminate against")
        sizes[name] = count
    return index, sizes


def decontaminate_file(
    path: str, name: str, index: EvalIndex, fields: Sequence[str], threshold: float, out_dir: str
) -> TrainReport:
    """Stream one training file: find overlaps, write the kept rows and the removed ids."""
    report = TrainReport(name, path)
    hf = _is_hf_dataset(path)
    kept_indices: list[int] = []
    fd, temp_path = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as kept:
            for row in iter_rows(path, fields):
                report.rows += 1
                overlaps = index.overlaps(row.prompt, threshold)
                if not overlaps:
                    if hf:
                        kept_indices.append(row.index)
                    else:
                        kept.write(row.raw_line if row.raw_line.endswith("\n") else row.raw_line + "\n")
                    continue
                report.removed += 1
                matches = []
                for overlap in overlaps:
                    instance = index.instances[overlap.instance_index]
                    report.overlapped_eval.setdefault(instance.eval_set, set()).add(overlap.instance_index)
                    matches.append(
                        {
                            "eval_set": instance.eval_set,
                            "eval_id": instance.key,
                            "coverage": round(overlap.coverage, 4),
                        }
                    )
                report.removed_rows.append({"id": row.key, "matches": matches})
        if hf:
            os.unlink(temp_path)
            _load_hf(path).select(kept_indices).save_to_disk(os.path.join(out_dir, name))
        else:
            os.chmod(temp_path, 0o666 & ~current_umask())  # mkstemp creates 0600
            os.replace(temp_path, os.path.join(out_dir, f"{name}.jsonl"))
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise
    with open(os.path.join(out_dir, f"{name}.removed_ids.txt"), "w", encoding="utf-8") as ids:
        ids.writelines(f"{removed['id']}\n" for removed in report.removed_rows)
    return report


def contamination_table(
    reports: Sequence[TrainReport], eval_sizes: dict[str, int], dataset_threshold: float
) -> list[dict]:
    """One row per (training set, eval set): the eval instances overlapped, their share and the
    ``contaminated`` flag (share > ``dataset_threshold``)."""
    rows = []
    for report in reports:
        for eval_set, size in eval_sizes.items():
            overlapped = len(report.overlapped_eval.get(eval_set, ()))
            fraction = overlapped / size if size else 0.0
            rows.append(
                {
                    "train": report.name,
                    "eval": eval_set,
                    "eval_instances_overlapped": overlapped,
                    "eval_instances": size,
                    "fraction": fraction,
                    "train_rows_matched": report.removed,
                    "train_rows": report.rows,
                    "contaminated": fraction > dataset_threshold,
                }
            )
    return rows
