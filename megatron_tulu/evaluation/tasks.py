"""Benchmark readers: the public file formats of GSM8K, MATH / MATH-500, IFEval and RLVR JSONL.

Every reader turns a file into :class:`EvalItem` objects that carry the question (the user text
the verifier and the 8-gram decontamination look at), the gold answer in the form the verifier
registry expects, and the file location, so a bad row is reported as ``file:line: reason``.

Formats (one JSON object per line):

* GSM8K test: ``{"question", "answer"}``; the gold is the number after ``#### `` in ``answer``.
* MATH / MATH-500: ``{"problem", "solution"}`` (gold = the last ``\\boxed{}`` of the solution) or
  ``{"problem", "answer"}`` (MATH-500 carries both; ``answer`` wins). ``subject``/``type`` and
  ``level`` are kept for macro averages.
* IFEval input data: ``{"key", "prompt", "instruction_id_list", "kwargs"}``.
* RLVR: ``{"messages", "ground_truth", "dataset"}`` (the training format of ``rlvr``); the
  prompt is the conversation as written, never wrapped in few-shot exemplars.

A task named without a path (``gsm8k``, ``math``, ``ifeval``) reads the small hand-written fixture
shipped in ``megatron_tulu/assets/data/eval/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_tulu.data.io import DataError, read_rows

FIXTURES = Path(__file__).resolve().parents[1] / "assets" / "data" / "eval"
SHIPPED = {
    "gsm8k": FIXTURES / "gsm8k_test.jsonl",
    "math": FIXTURES / "math_test.jsonl",
    "ifeval": FIXTURES / "ifeval_input_data.jsonl",
}
FORMATS = ("gsm8k", "math", "ifeval", "rlvr")


class TaskFileError(ValueError):
    """A task file (or task spec) that cannot be read; the message starts with ``file:line``."""


@dataclass
class EvalItem:
    """One benchmark question, ready to be prompted and verified."""

    task: str  # the task name the user gave (a results.json key)
    index: int  # position in the task
    location: str  # "file:line", for error messages and per-sample records
    question: str  # the user text (verifier prompt, decontamination text)
    ground_truth: Any  # what the verifier registry expects for `dataset`
    dataset: str  # verifier name: gsm8k | math | ifeval | any registered one
    kind: str  # reader format: gsm8k | math | ifeval | rlvr (selects the prompt template)
    messages: list[dict[str, str]] | None = None  # rlvr rows: the conversation as given
    meta: dict[str, Any] = field(default_factory=dict)  # subject, level, key, ...


def _text(row: dict[str, Any], key: str, location: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if key not in row else f"a {type(value).__name__}" if value is not None else "null"
        raise TaskFileError(f"{location}: field {key!r} must be a non-empty string (got {got})")
    return value


def gsm8k_gold(answer: str) -> str | None:
    """The number after the last ``####`` of a GSM8K answer, without thousands separators."""
    if "####" not in answer:
        return None
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "")
    return gold or None


def read_gsm8k_row(row: dict[str, Any], location: str, task: str, index: int) -> EvalItem:
    question = _text(row, "question", location)
    gold = gsm8k_gold(_text(row, "answer", location))
    if gold is None:
        raise TaskFileError(f"{location}: GSM8K field 'answer' has no '#### <number>' final line")
    return EvalItem(task, index, location, question, gold, "gsm8k", "gsm8k")


def read_math_row(row: dict[str, Any], location: str, task: str, index: int) -> EvalItem:
    from megatron_tulu.rewards.math_extract import last_boxed_answer

    question = _text(row, "problem", location)
    gold = row.get("answer")
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not (isinstance(gold, str) and gold.strip()):
        if "solution" not in row:
            raise TaskFileError(f"{location}: MATH row needs 'answer' or a 'solution' with \\boxed{{}}")
        gold = last_boxed_answer(_text(row, "solution", location))
        if not gold:
            raise TaskFileError(f"{location}: MATH field 'solution' has no complete \\boxed{{...}} answer")
    meta = {k: row[k] for k in ("subject", "type", "level", "unique_id") if k in row}
    return EvalItem(task, index, location, question, gold.strip(), "math", "math", meta=meta)


def read_ifeval_row(row: dict[str, Any], location: str, task: str, index: int) -> EvalItem:
    from megatron_tulu.rewards import InvalidGroundTruthError
    from megatron_tulu.rewards.ifeval.verifier import parse_ground_truth

    prompt = _text(row, "prompt", location)
    ids = row.get("instruction_id_list")
    kwargs = row.get("kwargs")
    gold = {"instruction_id_list": ids, "kwargs": kwargs}
    try:
        parse_ground_truth(gold)
    except InvalidGroundTruthError as exc:
        raise TaskFileError(f"{location}: IFEval row: {exc}") from None
    meta = {"key": row["key"]} if "key" in row else {}
    return EvalItem(task, index, location, prompt, gold, "ifeval", "ifeval", meta=meta)


def read_rlvr_row(row: dict[str, Any], location: str, task: str, index: int) -> EvalItem:
    # the RL trainer's own row parser: a held-out file the trainer accepts, eval accepts, and alike
    from megatron_tulu.data.io import RowError
    from megatron_tulu.data.rlvr_prompts import parse_rlvr_row

    try:
        messages, ground_truth, dataset = parse_rlvr_row(row)
    except RowError as exc:
        raise TaskFileError(f"{location}: {exc.detail}") from None
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    meta = {"id": row["id"]} if "id" in row else {}
    return EvalItem(task, index, location, user, ground_truth, dataset, "rlvr", messages=messages, meta=meta)


READERS: dict[str, Callable[[dict[str, Any], str, str, int], EvalItem]] = {
    "gsm8k": read_gsm8k_row,
    "math": read_math_row,
    "ifeval": read_ifeval_row,
    "rlvr": read_rlvr_row,
}


def detect_format(row: dict[str, Any]) -> str | None:
    """Which public format a row is in, from its fields (None if none fits)."""
    if "messages" in row and "ground_truth" in row:
        return "rlvr"
    if "instruction_id_list" in row and "prompt" in row:
        return "ifeval"
    if "problem" in row and ("solution" in row or "answer" in row):
        return "math"
    if "question" in row and "answer" in row:
        return "gsm8k"
    return None


def read_task_file(path: str | Path, task: str, fmt: str | None = None) -> list[EvalItem]:
    """All items of one benchmark file; ``fmt=None`` detects the format from the first row.

    Raises TaskFileError naming ``file:line`` for the first bad row (a bad benchmark file should
    stop an evaluation before any generation is spent on it).
    """
    if fmt is not None and fmt not in READERS:
        raise TaskFileError(f"{path}: unknown task format {fmt!r}; known: {', '.join(FORMATS)}")
    items: list[EvalItem] = []
    try:
        for location, row in read_rows(path):
            kind = fmt or detect_format(row)
            if kind is None:
                raise TaskFileError(
                    f"{location}: not a known benchmark row (fields {sorted(row)}); expected GSM8K "
                    "(question, answer), MATH (problem, solution|answer), IFEval (key, prompt, "
                    "instruction_id_list, kwargs) or RLVR (messages, ground_truth, dataset)"
                )
            fmt = fmt or kind
            items.append(READERS[kind](row, location, task, len(items)))
    except DataError as exc:
        raise TaskFileError(str(exc)) from None
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such task file") from None
    if not items:
        raise TaskFileError(f"{path}: task file has no rows")
    return items


def read_task_files(paths: Sequence[str | Path], task: str, fmt: str | None = None) -> list[EvalItem]:
    """Several files as one task (e.g. RLVR's ``heldout_files``), items numbered across files."""
    items = [item for path in paths for item in read_task_file(path, task, fmt)]
    for k, item in enumerate(items):
        item.index = k
    return items


def parse_task_spec(spec: str) -> list[tuple[str, Path, str | None]]:
    """``"gsm8k,math,mine=path.jsonl,gsm8k=full_test.jsonl"`` -> [(name, path, format or None)].

    A bare shipped name uses its fixture. ``name=path`` reads the file; when ``name`` is one of the
    public formats (gsm8k, math, ifeval) that format is used, otherwise it is detected per file.
    """
    tasks: list[tuple[str, Path, str | None]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, path = part.partition("=")
        name = name.strip()
        if not sep:
            if name not in SHIPPED:
                raise TaskFileError(
                    f"--tasks: {name!r} has no shipped fixture (shipped: {', '.join(SHIPPED)}); "
                    f"give a file as {name}=path.jsonl"
                )
            tasks.append((name, SHIPPED[name], name))
        else:
            if not name or not path.strip():
                raise TaskFileError(f"--tasks: {part!r} must look like name=path.jsonl")
            tasks.append((name, Path(path.strip()), name if name in SHIPPED else None))
    names = [t[0] for t in tasks]
    if not tasks:
        raise TaskFileError("--tasks: no task given")
    if len(set(names)) != len(names):
        raise TaskFileError(f"--tasks: a task name appears twice in {names}")
    return tasks


def load_tasks(spec: str) -> dict[str, list[EvalItem]]:
    """Read every task of a ``--tasks`` spec, in the order given."""
    return {name: read_task_file(path, name, fmt) for name, path, fmt in parse_task_spec(spec)}
