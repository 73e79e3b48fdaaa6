"""`megatron-tulu decontaminate`: remove training prompts that overlap evaluation prompts.

Tülu 3 §3.2: 8-gram matching on prompts only. A training instance is removed when it covers more
than 50% of the tokens of some eval instance (see `ngram_overlap`). A training dataset is flagged
as contaminated when its instances overlap more than 2% of the instances of any eval set; the
paper then dropped such datasets entirely or kept only the clean instances, a decision left to the
user (the flag is reported, and the cleaned copy is always written).

Inputs are JSONL files, HF datasets saved with `save_to_disk` (a directory), or parquet: one file
or a folder in the hub layout (`data/train-*.parquet`; kept rows are then written as JSONL). The prompt of a row
is, by default, the concatenated user turns of `messages`, else `prompt` (a string, or a
messages list), else `question`/`problem`/`instruction` (common eval-set fields); `--field`
overrides that order. Outputs in `--out`:
  <name>.jsonl (or <name>/ for an HF dataset)  the training rows that were kept
  <name>.removed_ids.txt                       ids of removed rows (`id` field, else file:line)
  report.json                                  all numbers printed in the table, plus each
                                               removed row's matching eval instances
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_tulu.rewards.ngram_overlap import EvalIndex
from megatron_tulu.rewards.verify_cli import _current_umask

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
    from megatron_tulu.data.io import _is_save_to_disk

    return os.path.isdir(path) and _is_save_to_disk(Path(path))


def _is_parquet(path: str) -> bool:
    """A parquet file, or a folder of parquet shards as the hub stores a dataset."""
    return path.endswith(".parquet") or os.path.isdir(path)


def _iter_parquet_rows(path: str, fields: Sequence[str]) -> Iterator[Row]:
    # Kept rows of parquet input are written as JSONL (`raw_line` is the row as JSON).
    from megatron_tulu.data.io import DataError, read_rows

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
    # Bytes, decoded line by line, so a bad byte is reported with its file and line (a text-mode
    # read raises a bare UnicodeDecodeError).
    with open(path, "rb") as handle:
        index = 0
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte order mark
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{line_number}: invalid UTF-8 at byte {exc.start} of the line"
                ) from None
            try:
                # Without the line ending, so a truncated line's error names its last column.
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{path}:{line_number}: invalid JSON: {exc.msg} at column {exc.colno}"
                ) from None
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


def _unique_names(paths: Sequence[str]) -> list[str]:
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
    for name, path in zip(_unique_names(eval_paths), eval_paths):
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
            os.chmod(temp_path, 0o666 & ~_current_umask())  # mkstemp creates 0600
            os.replace(temp_path, os.path.join(out_dir, f"{name}.jsonl"))
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise
    with open(os.path.join(out_dir, f"{name}.removed_ids.txt"), "w", encoding="utf-8") as ids:
        ids.writelines(f"{removed['id']}\n" for removed in report.removed_rows)
    return report


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="megatron-tulu decontaminate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", required=True, help="training JSONL files / HF dataset dirs")
    parser.add_argument("--eval", nargs="+", required=True, help="evaluation JSONL files / HF dataset dirs")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--ngram", type=int, default=8)
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="instance overlap: > this token fraction"
    )
    parser.add_argument(
        "--dataset-threshold",
        type=float,
        default=0.02,
        help="flag a training set overlapping > this eval fraction",
    )
    parser.add_argument(
        "--field",
        action="append",
        default=None,
        help=f"prompt field(s), tried in order (default: {DEFAULT_FIELDS})",
    )
    return parser.parse_args(argv)


def _table(
    reports: Sequence[TrainReport], eval_sizes: dict[str, int], dataset_threshold: float
) -> list[dict]:
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


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    fields = tuple(args.field) if args.field else DEFAULT_FIELDS
    os.makedirs(args.out, exist_ok=True)
    try:
        index, eval_sizes = build_eval_index(args.eval, fields, args.ngram)
        reports = [
            decontaminate_file(path, name, index, fields, args.threshold, args.out)
            for name, path in zip(_unique_names(args.train), args.train)
        ]
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    table = _table(reports, eval_sizes, args.dataset_threshold)
    header = f"{'train':<24} {'eval':<20} {'overlap':>12} {'%':>7} {'train rows hit':>15}  flag"
    print(header)
    print("-" * len(header))
    for row in table:
        overlap = f"{row['eval_instances_overlapped']}/{row['eval_instances']}"
        flag = "CONTAMINATED" if row["contaminated"] else ""
        print(
            f"{row['train']:<24} {row['eval']:<20} {overlap:>12} {100 * row['fraction']:>6.2f}% "
            f"{row['train_rows_matched']:>8}/{row['train_rows']:<6}  {flag}"
        )
    if index.too_short:
        print(f"note: {index.too_short} eval instance(s) shorter than {args.ngram} tokens cannot be matched")
    flagged = sorted({row["train"] for row in table if row["contaminated"]})
    print(
        f"contaminated training sets (> {100 * args.dataset_threshold:g}% of an eval set): {flagged or 'none'}"
    )
    report = {
        "ngram": args.ngram,
        "threshold": args.threshold,
        "dataset_threshold": args.dataset_threshold,
        "tokenization": "lowercase, \\w+ runs",
        "eval_sets": eval_sizes,
        "eval_instances_too_short": index.too_short,
        "table": table,
        "contaminated_training_sets": flagged,
        "removed": {r.name: r.removed_rows for r in reports},
    }
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return 0
