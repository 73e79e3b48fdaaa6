"""Deterministic synthetic verifiable tasks: the embedded default data for SFT, DPO and RLVR.

The tasks are ``data/synthetic_tasks.py``'s two families, ``gsm8k`` (1-3 step arithmetic word
problems; the ground truth is ``"N"``) and ``ifeval`` (a writing request plus one or two IFEval
constraints; the ground truth is the JSON string ``{"instruction_id_list": [...], "kwargs": [{...},
...]}``); ``data/synthetic_check.py`` scores replies to them. This module lays them out as rows and
writes the shipped files.

Row layouts (one JSON object per line in the shipped files):

* SFT: ``{"id", "messages": [{"role", "content"}, ...], "dataset"}``. Some rows carry a system prompt and
  some are two-turn, so label masking of non-final assistant turns gets exercised.
* Preference: ``{"id", "prompt", "chosen", "rejected", "dataset"}`` in the layout of the Tülu 3 preference
  mixture: ``prompt`` is the user text, ``chosen`` / ``rejected`` are full conversations
  ``[user, assistant]`` that differ only in the assistant reply. ``chosen`` passes the verifier,
  ``rejected`` fails it (off-by-k arithmetic, or one violated constraint).
* RLVR: ``{"id", "messages": [user turn], "ground_truth", "dataset"}``. ``ground_truth`` is always a string
  (JSON-encoded for ifeval) so every column has one type, as in the Tülu RLVR datasets.

Train / held-out split: a problem's split is a pure function of a hash of its prompt text, so the two
splits can never share an identical problem, whatever ``n`` and ``seed`` are, and across all three row kinds.

Regenerate the shipped files with ``python -m megatron_tulu.commands.synthetic_data --out
megatron_tulu/assets/data``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from megatron_tulu.data.synthetic_tasks import make_arithmetic_problem, make_ifeval_task

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")
# About one problem in ten is held out.
HELDOUT_BUCKETS = 10

EMBEDDED_DATA_DIR = Path(__file__).resolve().parent.parent / "assets" / "data"

# Default sizes of the shipped files: small enough for a CPU run, large enough to see learning.
# The RLVR held-out set is larger: it measures every pipeline stage, and 500 prompts make a few points
# difference between stages distinguishable from noise.
DEFAULT_SIZES: dict[str, int] = {"sft": 2000, "dpo": 1000, "rlvr": 1000, "heldout": 200, "rlvr_heldout": 500}

# --------------------------------------------------------------------------------------------------------
# Splits and row builders.


def split_of(prompt: str) -> Split:
    """The split a prompt belongs to: a fixed function of its text, so splits never share a problem."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") % HELDOUT_BUCKETS
    return "heldout" if bucket == 0 else "train"


@dataclass(frozen=True)
class _Item:
    """A task drawn for some split: prompt, good and bad replies, ground truth."""

    dataset: str
    prompt: str
    chosen: str
    rejected: str
    ground_truth: str


def _draw_item(rng: random.Random, dataset: str) -> _Item:
    if dataset == "gsm8k":
        p = make_arithmetic_problem(rng)
        style = "hash" if rng.random() < 0.7 else "sentence"
        k = rng.choice((-3, -2, -1, 1, 2, 3))
        wrong = p.answer + k if p.answer + k >= 0 else p.answer + abs(k)
        return _Item("gsm8k", p.question, p.response(style), p.response(style, wrong), str(p.answer))
    t = make_ifeval_task(rng)
    return _Item("ifeval", t.prompt, t.chosen, t.rejected, t.ground_truth)


def _items(kind: str, split: str, seed: int) -> Iterator[_Item]:
    """Endless stream of items of ``split``, unique by prompt, alternating the two datasets at random."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # A string seed is hashed deterministically by random.Random (unlike hash(), which is salted per process).
    rng = random.Random(f"megatron-tulu-synthetic:{kind}:{split}:{seed}")
    seen: set[str] = set()
    misses = 0
    while True:
        item = _draw_item(rng, rng.choice(("gsm8k", "ifeval")))
        if item.prompt in seen or split_of(item.prompt) != split:
            misses += 1
            if misses > 200_000:  # the prompt space is far larger than any size we ship; this is a bug guard
                raise RuntimeError(f"synthetic {kind}/{split}: ran out of distinct prompts")
            continue
        seen.add(item.prompt)
        yield item


SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a careful assistant. Answer briefly.",
    "You are a friendly tutor who shows short working.",
)


def sft_rows(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` SFT conversations; about 15% have a system prompt and 10% are two user/assistant exchanges."""
    rng = random.Random(f"megatron-tulu-sft-layout:{split}:{seed}")
    items = _items("sft", split, seed)
    rows = []
    for i in range(n):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.15:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        turns = 2 if rng.random() < 0.10 else 1
        datasets = []
        for _ in range(turns):
            item = next(items)
            datasets.append(item.dataset)
            messages.append({"role": "user", "content": item.prompt})
            messages.append({"role": "assistant", "content": item.chosen})
        rows.append({"id": f"sft-{split}-{i:05d}", "messages": messages, "dataset": datasets[-1]})
    return rows


def preference_rows(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` preference pairs; chosen is verifiably correct, rejected verifiably wrong."""
    rows = []
    for i, item in zip(range(n), _items("dpo", split, seed)):
        user = {"role": "user", "content": item.prompt}
        rows.append(
            {
                "id": f"dpo-{split}-{i:05d}",
                "prompt": item.prompt,
                "chosen": [user, {"role": "assistant", "content": item.chosen}],
                "rejected": [dict(user), {"role": "assistant", "content": item.rejected}],
                "dataset": item.dataset,
            }
        )
    return rows


def rlvr_rows(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` RLVR prompts (a single user turn) with their ground truth."""
    return [
        {
            "id": f"rlvr-{split}-{i:05d}",
            "messages": [{"role": "user", "content": item.prompt}],
            "ground_truth": item.ground_truth,
            "dataset": item.dataset,
        }
        for i, item in zip(range(n), _items("rlvr", split, seed))
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_embedded_datasets(
    out_dir: str | Path,
    seed: int = 0,
    n_sft: int = DEFAULT_SIZES["sft"],
    n_dpo: int = DEFAULT_SIZES["dpo"],
    n_rlvr: int = DEFAULT_SIZES["rlvr"],
    n_heldout: int = DEFAULT_SIZES["heldout"],
    n_rlvr_heldout: int = DEFAULT_SIZES["rlvr_heldout"],
) -> dict[str, Path]:
    """Write sft/dpo/rlvr.jsonl and their ``*_heldout.jsonl`` twins; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builders: dict[str, tuple[Callable[..., list[dict[str, Any]]], int, int]] = {
        "sft": (sft_rows, n_sft, n_heldout),
        "dpo": (preference_rows, n_dpo, n_heldout),
        "rlvr": (rlvr_rows, n_rlvr, n_rlvr_heldout),
    }
    written: dict[str, Path] = {}
    for name, (build, n_train, n_test) in builders.items():
        for split, n in (("train", n_train), ("heldout", n_test)):
            fname = f"{name}.jsonl" if split == "train" else f"{name}_heldout.jsonl"
            write_jsonl(out / fname, build(n, seed=seed, split=split))
            written[fname.removesuffix(".jsonl")] = out / fname
    return written
