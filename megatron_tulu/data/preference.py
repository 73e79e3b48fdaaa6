"""Preference (DPO) pairs: validated, tokenized, truncated, and collated (tulu3-facts §2).

Accepted rows (extra keys ignored):

* ``{"prompt": str | messages, "chosen": str, "rejected": str}``: the strings are the assistant replies;
  a string prompt becomes one user turn.
* ``{"prompt"?: ..., "chosen": messages, "rejected": messages}``: full conversations whose last message is
  the assistant reply, as in the shipped ``dpo.jsonl`` and Tülu 3's preference mixtures. Everything before
  the reply (the shared prefix) must be identical in both, and must agree with ``prompt`` when given: a
  messages prompt must equal the prefix, a string prompt must be the content of one of its user turns.
  A one-message conversation (just the reply) takes its prefix from ``prompt``.

Each side is tokenized with the Tülu template (``tokenize_chat``) and labelled only on the final reply and
its EOS: earlier assistant turns in a multi-turn prefix are context, not training targets. Both sides share
the exact same prompt tokens. Over-long pairs lose prompt tokens from the left (the reply is what DPO
scores); a pair whose longer reply leaves no room for even one prompt token is dropped. Both are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from megatron_tulu.data.chat_template import IGNORE_INDEX, tokenize_chat
from megatron_tulu.data.io import (
    EMPTY_CONTENT,
    LAST_NOT_ASSISTANT,
    MISSING_FIELD,
    PREFIX_MISMATCH,
    WRONG_TYPE,
    PathLike,
    RowError,
    check_messages,
)
from megatron_tulu.data.loading import LoadReport, TokenizingLoader
from megatron_tulu.data.packing import build_row, collate_rows


@dataclass
class PrefExample:
    """A tokenized pair; labels are per-token (``IGNORE_INDEX`` on the prompt)."""

    chosen_input_ids: list[int]
    chosen_labels: list[int]
    rejected_input_ids: list[int]
    rejected_labels: list[int]
    prompt_len: int  # shared prompt tokens at the start of both sides (after any truncation)
    location: str
    id: str | None = None


@dataclass
class PreferenceReport(LoadReport):
    """What ``load_preference_examples`` did with the rows it read."""

    pairs: int = 0  # pairs returned
    prompt_truncated: int = 0  # prompt cut from the left to fit max_seq_len
    dropped_too_long: int = 0  # a reply (plus one prompt token) alone exceeds max_seq_len

    def summary(self) -> str:
        return (
            f"{self.pairs} preference pairs from {self.rows} valid rows; {self.prompt_truncated} prompts "
            f"truncated, {self.dropped_too_long} pairs dropped as too long; {self.skips_and_cache()}"
        )


def _reply_side(value: Any, key: str) -> tuple[list[dict[str, str]] | None, str]:
    """``(prefix or None, reply)`` from a string reply or a conversation ending in the reply."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(EMPTY_CONTENT, f"{key} is empty")
        return None, value
    messages = check_messages(value, require_assistant=False, what=key)
    if messages[-1]["role"] != "assistant":
        raise RowError(
            LAST_NOT_ASSISTANT, f"{key} must end with the assistant reply, ends with {messages[-1]['role']}"
        )
    return messages[:-1] or None, messages[-1]["content"]


def parse_preference_row(row: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    """``(prefix messages, chosen reply, rejected reply)`` of a row, or ``RowError``."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(MISSING_FIELD, f"row has no '{key}' field")
        if not isinstance(row[key], (str, list)):
            raise RowError(
                WRONG_TYPE, f"{key} must be a string or a list of messages, got {type(row[key]).__name__}"
            )
    chosen_prefix, chosen = _reply_side(row["chosen"], "chosen")
    rejected_prefix, rejected = _reply_side(row["rejected"], "rejected")
    if chosen_prefix != rejected_prefix:
        raise RowError(PREFIX_MISMATCH, "chosen and rejected differ before the final assistant reply")

    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise RowError(
            WRONG_TYPE, f"prompt must be a string or a list of messages, got {type(prompt).__name__}"
        )
    if isinstance(prompt, str) and not prompt.strip():
        raise RowError(EMPTY_CONTENT, "prompt is empty")
    prompt_msgs = (
        [{"role": "user", "content": prompt}]
        if isinstance(prompt, str)
        else check_messages(prompt, require_assistant=False, what="prompt")
        if isinstance(prompt, list)
        else None
    )

    if chosen_prefix is None:
        if prompt_msgs is None:
            raise RowError(MISSING_FIELD, "row has no 'prompt' and chosen/rejected carry no conversation")
        return prompt_msgs, chosen, rejected
    if isinstance(prompt, list) and prompt_msgs != chosen_prefix:
        raise RowError(PREFIX_MISMATCH, "prompt messages differ from the conversation before the reply")
    if isinstance(prompt, str) and not any(
        m["role"] == "user" and m["content"] == prompt for m in chosen_prefix
    ):
        raise RowError(
            PREFIX_MISMATCH, "prompt text is not any user turn of the chosen/rejected conversation"
        )
    return chosen_prefix, chosen, rejected


def _split_prompt_reply(
    tokenizer: Any, prefix: list[dict[str, str]], reply: str
) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (everything up to ``<|assistant|>\\n``) and of ``reply`` + EOS."""
    ids, _ = tokenize_chat(tokenizer, [*prefix, {"role": "assistant", "content": reply}])
    # tokenize_chat encodes the final reply and its EOS as their own pieces, so the full ids end with them.
    reply_ids = [*tokenizer.encode(reply, add_special_tokens=False), tokenizer.eos_token_id]
    if ids[len(ids) - len(reply_ids) :] != reply_ids:
        raise AssertionError("tokenize_chat no longer ends with the separately encoded reply")
    return ids[: len(ids) - len(reply_ids)], reply_ids


def _tokenize_pairs(batch: dict[str, list[Any]], tokenizer: Any, max_seq_len: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        "chosen_input_ids": [],
        "chosen_labels": [],
        "rejected_input_ids": [],
        "rejected_labels": [],
        "prompt_len": [],
        "status": [],
    }
    for prefix, chosen, rejected in zip(batch["prefix"], batch["chosen"], batch["rejected"]):
        prompt, chosen_ids = _split_prompt_reply(tokenizer, prefix, chosen)
        prompt_r, rejected_ids = _split_prompt_reply(tokenizer, prefix, rejected)
        if prompt != prompt_r:
            raise AssertionError("chosen and rejected prompts tokenized differently")
        # One budget for both sides so they keep the same prompt; at least one prompt token must stay,
        # since the first reply token is predicted from the token before it.
        budget = max_seq_len - max(len(chosen_ids), len(rejected_ids))
        status = "ok"
        if budget < 1:
            status, prompt, chosen_ids, rejected_ids = "dropped", [], [], []
        elif len(prompt) > budget:
            status, prompt = "truncated", prompt[len(prompt) - budget :]
        masked = [IGNORE_INDEX] * len(prompt)
        out["chosen_input_ids"].append(prompt + chosen_ids)
        out["chosen_labels"].append(masked + chosen_ids)
        out["rejected_input_ids"].append(prompt + rejected_ids)
        out["rejected_labels"].append(masked + rejected_ids)
        out["prompt_len"].append(len(prompt))
        out["status"].append(status)
    return out


# kind, parser, record, tokenizer batch, version (bump it when the tokenized output for the same
# inputs changes, so stale caches are not reused), progress label
_LOADER = TokenizingLoader(
    "preference",
    parse_preference_row,
    lambda parsed: dict(zip(("prefix", "chosen", "rejected"), parsed)),
    _tokenize_pairs,
    1,
    "Tokenizing preference pairs",
)


def load_preference_examples(
    paths: PathLike | Sequence[PathLike],
    tokenizer: Any,
    max_seq_len: int = 2048,
    skip_bad: bool = False,
    cache_dir: PathLike | None = None,
    num_proc: int | None = None,
) -> tuple[list[PrefExample], PreferenceReport]:
    """Load, validate and tokenize preference pairs (see the module docstring for row layouts)."""
    if max_seq_len <= 1:
        raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
    report = PreferenceReport()
    rows, cols = _LOADER.load(
        paths, tokenizer, {"max_seq_len": max_seq_len}, report, skip_bad, cache_dir, num_proc
    )
    if not rows:
        return [], report

    pairs: list[PrefExample] = []
    for i, row in enumerate(rows):
        status = cols["status"][i]
        if status == "dropped":
            report.dropped_too_long += 1
            continue
        if status == "truncated":
            report.prompt_truncated += 1
        pairs.append(
            PrefExample(
                cols["chosen_input_ids"][i],
                cols["chosen_labels"][i],
                cols["rejected_input_ids"][i],
                cols["rejected_labels"][i],
                cols["prompt_len"][i],
                row.location,
                row.id,
            )
        )
    report.pairs = len(pairs)
    return pairs, report


def collate_pairs(
    pairs: Sequence[PrefExample], pad_to: int | None = None, pad_id: int = 0, concatenated: bool = False
) -> dict[str, Any]:
    """Batch pairs in the ``pad_batch`` format.

    Both sides are padded to one length (the longest of either, or ``pad_to``) so they can be stacked.
    Default: ``chosen_<key>`` and ``rejected_<key>`` for every ``pad_batch`` key (separate forward
    passes, as Tülu 3's cached-reference DPO does). ``concatenated=True``: the plain ``pad_batch`` keys for
    ``[chosen; rejected]`` along the batch, i.e. rows ``0..b-1`` are chosen and ``b..2b-1`` rejected (one
    forward pass, the open-instruct default).
    """
    if not pairs:
        raise ValueError("cannot collate an empty batch")
    chosen = [(p.chosen_input_ids, p.chosen_labels) for p in pairs]
    rejected = [(p.rejected_input_ids, p.rejected_labels) for p in pairs]
    longest = max(len(ids) for ids, _ in chosen + rejected)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest} tokens)")
    if concatenated:
        return collate_rows([build_row([e], length, pad_id) for e in chosen + rejected])
    batch: dict[str, Any] = {}
    for side, examples in (("chosen", chosen), ("rejected", rejected)):
        for key, value in collate_rows([build_row([e], length, pad_id) for e in examples]).items():
            batch[f"{side}_{key}"] = value
    return batch
