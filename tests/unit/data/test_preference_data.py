"""Preference pairs: both row styles, prefix checks, truncation counts, bad rows and collation."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_tulu.data.chat_template import IGNORE_INDEX, tokenize_chat
from megatron_tulu.data.io import DataError
from megatron_tulu.data.preference import collate_pairs, load_preference_examples
from megatron_tulu.data.tokenizer import DATA_DIR, EOS_TOKEN

I = IGNORE_INDEX  # noqa: E741
SYSTEM = {"role": "system", "content": "Answer briefly."}
USER = {"role": "user", "content": "What is 2 + 3?"}
GOOD_REPLY = "2 + 3 = 5.\n#### 5"
BAD_REPLY = "2 + 3 = 6.\n#### 6"


def asst(text: str) -> dict:
    return {"role": "assistant", "content": text}


def trained_text(tok, ids, labels) -> str:
    return tok.decode([i for i, label in zip(ids, labels) if label != I], skip_special_tokens=False)


def test_shipped_dpo_message_list_style(tok, tmp_path):
    pairs, report = load_preference_examples(DATA_DIR / "dpo.jsonl", tok, cache_dir=tmp_path / "c")
    assert report.rows == report.pairs == len(pairs) == 1000
    assert report.prompt_truncated == report.dropped_too_long == report.skipped.total == 0
    with open(DATA_DIR / "dpo.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for pair, row in zip(pairs[:50], rows):
        # Untruncated pairs are exactly the template tokenization of each full conversation ...
        assert pair.chosen_input_ids == tokenize_chat(tok, row["chosen"])[0]
        assert pair.rejected_input_ids == tokenize_chat(tok, row["rejected"])[0]
        # ... with the same prompt tokens on both sides and labels only on the final reply + EOS.
        p = pair.prompt_len
        assert pair.chosen_input_ids[:p] == pair.rejected_input_ids[:p]
        assert pair.chosen_labels == [I] * p + pair.chosen_input_ids[p:]
        assert (
            trained_text(tok, pair.chosen_input_ids, pair.chosen_labels)
            == row["chosen"][-1]["content"] + EOS_TOKEN
        )
        assert (
            trained_text(tok, pair.rejected_input_ids, pair.rejected_labels)
            == row["rejected"][-1]["content"] + EOS_TOKEN
        )
    assert pairs[0].location == f"{DATA_DIR / 'dpo.jsonl'}:1" and pairs[0].id == "dpo-train-00000"


def test_string_style_equals_message_style(jsonl, tok, tmp_path):
    rows = [
        {"id": "str", "prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": BAD_REPLY},
        {
            "id": "list",
            "prompt": USER["content"],
            "chosen": [USER, asst(GOOD_REPLY)],
            "rejected": [USER, asst(BAD_REPLY)],
        },
        {"id": "msgprompt", "prompt": [SYSTEM, USER], "chosen": GOOD_REPLY, "rejected": BAD_REPLY},
        {
            "id": "noprompt",
            "chosen": [SYSTEM, USER, asst(GOOD_REPLY)],
            "rejected": [SYSTEM, USER, asst(BAD_REPLY)],
        },
        {
            "id": "replyonly",
            "prompt": [SYSTEM, USER],
            "chosen": [asst(GOOD_REPLY)],
            "rejected": [asst(BAD_REPLY)],
        },
    ]
    pairs, report = load_preference_examples(jsonl(rows), tok, cache_dir=tmp_path / "c")
    assert [p.id for p in pairs] == ["str", "list", "msgprompt", "noprompt", "replyonly"]
    by_id = {p.id: p for p in pairs}
    for a, b in (("str", "list"), ("msgprompt", "noprompt"), ("msgprompt", "replyonly")):
        assert by_id[a].chosen_input_ids == by_id[b].chosen_input_ids
        assert by_id[a].rejected_labels == by_id[b].rejected_labels
    assert by_id["str"].chosen_input_ids == tokenize_chat(tok, [USER, asst(GOOD_REPLY)])[0]
    assert by_id["msgprompt"].rejected_input_ids == tokenize_chat(tok, [SYSTEM, USER, asst(BAD_REPLY)])[0]


def test_multi_turn_prefix_trains_only_the_final_reply(jsonl, tok, tmp_path):
    earlier = asst("Sure.")
    convo = [USER, earlier, {"role": "user", "content": "And 3 + 4?"}]
    row = {"chosen": [*convo, asst("7")], "rejected": [*convo, asst("8")]}
    (pair,), _ = load_preference_examples(jsonl([row]), tok, cache_dir=tmp_path / "c")
    assert trained_text(tok, pair.chosen_input_ids, pair.chosen_labels) == "7" + EOS_TOKEN
    assert trained_text(tok, pair.rejected_input_ids, pair.rejected_labels) == "8" + EOS_TOKEN
    # The earlier assistant turn's EOS is context here, unlike in SFT.
    assert pair.chosen_input_ids.count(tok.eos_token_id) == 2
    assert sum(label == tok.eos_token_id for label in pair.chosen_labels) == 1
    assert pair.chosen_input_ids == tokenize_chat(tok, row["chosen"])[0]


BAD_PAIRS = [
    (
        "prefix_mismatch",
        {
            "chosen": [USER, asst(GOOD_REPLY)],
            "rejected": [{"role": "user", "content": "other"}, asst(BAD_REPLY)],
        },
        "differ before the final assistant reply",
    ),
    (
        "prefix_mismatch",
        {"prompt": "unrelated", "chosen": [USER, asst("a")], "rejected": [USER, asst("b")]},
        "not any user turn",
    ),
    (
        "prefix_mismatch",
        {"prompt": [SYSTEM, USER], "chosen": [USER, asst("a")], "rejected": [USER, asst("b")]},
        "differ",
    ),
    (
        "last_not_assistant",
        {"chosen": [USER, asst("a"), USER], "rejected": [USER, asst("b")]},
        "must end with the assistant",
    ),
    ("missing_field", {"prompt": "hi", "chosen": "a"}, "no 'rejected'"),
    ("missing_field", {"chosen": "a", "rejected": "b"}, "no 'prompt'"),
    ("wrong_type", {"prompt": "hi", "chosen": 3, "rejected": "b"}, "chosen must be a string or a list"),
    ("wrong_type", {"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt must be"),
    ("empty_content", {"prompt": "hi", "chosen": "", "rejected": "b"}, "chosen is empty"),
    (
        "unknown_role",
        {"chosen": [{"role": "bot", "content": "x"}, asst("a")], "rejected": [USER, asst("b")]},
        "unknown role",
    ),
    ("invalid_utf8", b'{"prompt": "\xc3\x28", "chosen": "a", "rejected": "b"}', "invalid UTF-8"),
    ("invalid_json", '{"prompt": "hi", "chosen": "a", "rejected": "b"', "invalid JSON"),
]


@pytest.mark.parametrize(
    ("reason", "row", "text"), BAD_PAIRS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_PAIRS)]
)
def test_bad_pair_raises_data_error_naming_file_and_line(jsonl, tok, tmp_path, reason, row, text):
    good = {"prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": BAD_REPLY}
    path = jsonl([good, good, row])
    with pytest.raises(DataError) as info:
        load_preference_examples(path, tok, cache_dir=tmp_path / "c")
    assert str(info.value).startswith(f"{path}:3: ")
    assert text in str(info.value)


def test_skip_bad_pairs_counts_by_reason(jsonl, tok, tmp_path):
    rows: list = []
    for i, (_, bad, _) in enumerate(BAD_PAIRS):
        rows += [
            {"id": f"ok{i}", "prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": BAD_REPLY},
            bad,
        ]
    pairs, report = load_preference_examples(jsonl(rows), tok, skip_bad=True, cache_dir=tmp_path / "c")
    assert [p.id for p in pairs] == [f"ok{i}" for i in range(len(BAD_PAIRS))]
    expected: dict[str, int] = {}
    for reason, _, _ in BAD_PAIRS:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(report.skipped.counts) == expected


def test_truncation_keeps_reply_and_cuts_prompt_from_the_left(jsonl, tok, tmp_path):
    long_prompt = "Please think about this question carefully. " * 12 + "What is 2 + 3?"
    long_reply = "The answer needs a long explanation. " * 12
    rows = [
        {"id": "fits", "prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": BAD_REPLY},
        {"id": "cut", "prompt": long_prompt, "chosen": GOOD_REPLY, "rejected": "6"},
        {"id": "drop", "prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": long_reply},
    ]
    max_len = 48
    full_cut = tokenize_chat(tok, [{"role": "user", "content": long_prompt}, asst(GOOD_REPLY)])[0]
    assert len(full_cut) > max_len
    assert len(tok.encode(long_reply)) + 1 >= max_len
    pairs, report = load_preference_examples(jsonl(rows), tok, max_seq_len=max_len, cache_dir=tmp_path / "c")
    assert [p.id for p in pairs] == ["fits", "cut"]
    assert (report.prompt_truncated, report.dropped_too_long, report.rows) == (1, 1, 3)
    cut = pairs[1]
    # The longer side (chosen) fills max_len exactly; it is the tail of the full sequence.
    assert len(cut.chosen_input_ids) == max_len and cut.chosen_input_ids == full_cut[-max_len:]
    reply = tok.encode(GOOD_REPLY, add_special_tokens=False) + [tok.eos_token_id]
    assert cut.chosen_labels == [I] * (max_len - len(reply)) + reply
    # Both sides keep the same (truncated) prompt.
    p = cut.prompt_len
    assert cut.chosen_input_ids[:p] == cut.rejected_input_ids[:p] and len(cut.rejected_input_ids) < max_len


def test_collate_pairs_separate_and_concatenated(tok, tmp_path, jsonl):
    rows = [
        {"prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": BAD_REPLY},
        {"prompt": "Hi", "chosen": "Hello there, how can I help?", "rejected": "No."},
    ]
    pairs, _ = load_preference_examples(jsonl(rows), tok, cache_dir=tmp_path / "c")
    longest = max(len(x) for p in pairs for x in (p.chosen_input_ids, p.rejected_input_ids))
    batch = collate_pairs(pairs, pad_id=tok.pad_token_id)
    for side in ("chosen", "rejected"):
        assert batch[f"{side}_tokens"].shape == (2, longest)
        for r, p in enumerate(pairs):
            ids, labels = getattr(p, f"{side}_input_ids"), getattr(p, f"{side}_labels")
            n = len(ids)
            assert batch[f"{side}_tokens"][r, :n].tolist() == ids
            assert batch[f"{side}_labels"][r, :n].tolist() == [*labels[1:], I]
            assert batch[f"{side}_loss_mask"][r].sum() == sum(x != I for x in labels)
            assert batch[f"{side}_document_ids"][r, n:].eq(-1).all()
    cat = collate_pairs(pairs, pad_to=64, pad_id=tok.pad_token_id, concatenated=True)
    assert cat["tokens"].shape == (4, 64)
    assert torch.equal(cat["tokens"][:2, :longest], batch["chosen_tokens"])
    assert torch.equal(cat["labels"][2:, :longest], batch["rejected_labels"])
    assert cat["cu_seqlens"][-1] == 4 * 64
    with pytest.raises(ValueError, match="shorter"):
        collate_pairs(pairs, pad_to=longest - 1)


def test_second_load_hits_the_cache(tok, tmp_path, jsonl):
    path = jsonl([{"prompt": USER["content"], "chosen": GOOD_REPLY, "rejected": BAD_REPLY}])
    first, r1 = load_preference_examples(path, tok, cache_dir=tmp_path / "c")
    second, r2 = load_preference_examples(path, tok, cache_dir=tmp_path / "c")
    assert (r1.cache_hit, r2.cache_hit) == (False, True) and first == second
    _, r3 = load_preference_examples(path, tok, max_seq_len=100, cache_dir=tmp_path / "c")
    assert not r3.cache_hit
