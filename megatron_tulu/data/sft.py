"""SFT data: validated, tokenized, label-masked conversations (tulu3-facts §1).

``load_sft_examples`` reads ``{"messages": [...]}`` rows (extra keys such as ``id``/``dataset`` allowed)
from JSONL files or saved HF datasets, validates them (bad rows raise ``DataError`` naming file and line,
or are counted with ``skip_bad=True``), tokenizes with ``tokenize_chat`` (labels only on assistant
content and each assistant EOS), truncates to ``max_seq_len`` and drops examples left with no label, as
the Tülu 3 SFT code does. Tokenization goes through the ``datasets`` cache (see ``io.tokenize_cached``).

Labels here are per-token (``labels[i]`` is ``input_ids[i]`` or ``IGNORE_INDEX``); ``packing.shift_labels``
turns them into next-token targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from megatron_tulu.data.chat_template import IGNORE_INDEX, has_trainable_labels, tokenize_chat
from megatron_tulu.data.io import MISSING_FIELD, PathLike, RowError, check_messages
from megatron_tulu.data.loading import LoadReport, TokenizingLoader


@dataclass
class Example:
    """One tokenized conversation: per-token ``labels`` (``IGNORE_INDEX`` off the assistant replies)."""

    input_ids: list[int]
    labels: list[int]
    location: str
    id: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SftReport(LoadReport):
    """What ``load_sft_examples`` did with the rows it read."""

    examples: int = 0  # examples returned
    truncated: int = 0  # kept, but cut to max_seq_len on the right
    dropped_too_long: int = 0  # over max_seq_len with truncate="drop"
    dropped_no_labels: int = 0  # no trainable label left after truncation
    tokens: int = 0
    label_tokens: int = 0

    def summary(self) -> str:
        return (
            f"{self.examples} SFT examples from {self.rows} valid rows ({self.tokens} tokens, "
            f"{self.label_tokens} trained); truncated {self.truncated}, dropped {self.dropped_too_long} too long "
            f"and {self.dropped_no_labels} with no label left; {self.skips_and_cache()}"
        )


def parse_sft_row(row: dict[str, Any]) -> list[dict[str, str]]:
    """The validated messages of one SFT row (``RowError`` with a reason key if the row is bad)."""
    if "messages" not in row:
        raise RowError(MISSING_FIELD, "row has no 'messages' field")
    return check_messages(row["messages"], require_assistant=True)


def _tokenize_batch(
    batch: dict[str, list[Any]], tokenizer: Any, max_seq_len: int, truncate: str
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "full_length": []}
    for messages in batch["messages"]:
        ids, labels = tokenize_chat(tokenizer, messages)
        out["full_length"].append(len(ids))
        if len(ids) > max_seq_len:
            # "drop": store nothing for rows that are dropped anyway.
            keep = max_seq_len if truncate == "right" else 0
            ids, labels = ids[:keep], labels[:keep]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
    return out


# kind, parser, record, tokenizer batch, version (bump it when the tokenized output for the same
# inputs changes, so stale caches are not reused), progress label
_LOADER = TokenizingLoader(
    "sft", parse_sft_row, lambda messages: {"messages": messages}, _tokenize_batch, 1, "Tokenizing SFT"
)


def load_sft_examples(
    paths: PathLike | Sequence[PathLike],
    tokenizer: Any,
    max_seq_len: int = 4096,
    skip_bad: bool = False,
    truncate: Literal["right", "drop"] = "right",
    cache_dir: PathLike | None = None,
    num_proc: int | None = None,
) -> tuple[list[Example], SftReport]:
    """Load, validate and tokenize SFT conversations from JSONL files / saved HF datasets.

    ``truncate="right"`` cuts long examples to ``max_seq_len`` (the Tülu 3 behaviour) and ``"drop"``
    leaves them out; either way the counts are in the report, as are examples dropped because no label
    survived. ``cache_dir`` defaults to ``io.default_cache_dir()``; ``num_proc`` > 1 tokenizes in worker
    processes (worth it only for large corpora).
    """
    if max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
    if truncate not in ("right", "drop"):
        raise ValueError(f"truncate must be 'right' or 'drop', got {truncate!r}")
    report = SftReport()
    rows, columns = _LOADER.load(
        paths,
        tokenizer,
        {"max_seq_len": max_seq_len, "truncate": truncate},
        report,
        skip_bad,
        cache_dir,
        num_proc,
    )
    if not rows:
        return [], report

    examples: list[Example] = []
    for row, ids, labels, full in zip(rows, columns["input_ids"], columns["labels"], columns["full_length"]):
        if full > max_seq_len and truncate == "drop":
            report.dropped_too_long += 1
            continue
        if not has_trainable_labels(labels):
            report.dropped_no_labels += 1
            continue
        # Counted only for kept examples, so truncated + dropped_* never count a row twice.
        if full > max_seq_len:
            report.truncated += 1
        examples.append(Example(ids, labels, row.location, row.id))
        report.tokens += len(ids)
        report.label_tokens += sum(1 for x in labels if x != IGNORE_INDEX)
    report.examples = len(examples)
    return examples, report
