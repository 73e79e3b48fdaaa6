"""SFT loading: label masking, bad rows, truncation/drop counts, and the tokenization cache."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from megatron_tulu.data import sft as sft_module
from megatron_tulu.data.chat_template import IGNORE_INDEX, tokenize_chat
from megatron_tulu.data.io import DataError
from megatron_tulu.data.packing import shift_labels
from megatron_tulu.data.sft import load_sft_examples
from megatron_tulu.data.tokenizer import DATA_DIR, EOS_TOKEN

SYSTEM = {"role": "system", "content": "You are terse."}
Q1 = {"role": "user", "content": "Sam has 12 apples and buys 7 more. How many apples does Sam have?"}
A1 = {"role": "assistant", "content": "12 + 7 = 19.\n#### 19"}
Q2 = {"role": "user", "content": "Say hello in lowercase."}
A2 = {"role": "assistant", "content": "hello"}
GOOD = {"id": "g", "messages": [SYSTEM, Q1, A1, Q2, A2]}


def runs(mask: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of True."""
    out, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_labels_only_on_assistant_replies_and_their_eos(jsonl, tok, tmp_path):
    (ex,), _ = load_sft_examples(jsonl([GOOD]), tok, cache_dir=tmp_path / "c")
    ids, labels = ex.input_ids, ex.labels
    trained = [label != IGNORE_INDEX for label in labels]
    assert all(labels[i] == ids[i] for i in range(len(ids)) if trained[i])
    # Trained text is exactly the two replies, each closed by its EOS.
    spans = [tok.decode(ids[a:b], skip_special_tokens=False) for a, b in runs(trained)]
    assert spans == [A1["content"] + EOS_TOKEN, A2["content"] + EOS_TOKEN]
    # Everything untrained is template/system/user text, and every EOS in the example is trained.
    untrained = tok.decode([i for i, t in zip(ids, trained) if not t], skip_special_tokens=False)
    assert untrained == (
        f"<|system|>\n{SYSTEM['content']}\n<|user|>\n{Q1['content']}\n<|assistant|>\n"
        f"\n<|user|>\n{Q2['content']}\n<|assistant|>\n"
    )
    eos_positions = [i for i, t in enumerate(ids) if t == tok.eos_token_id]
    assert len(eos_positions) == 2 and all(trained[i] for i in eos_positions)
    role_ids = {tok.convert_tokens_to_ids(t) for t in ("<|system|>", "<|user|>", "<|assistant|>")}
    assert all(not trained[i] for i, t in enumerate(ids) if t in role_ids)


def test_shift_labels_targets_are_the_next_assistant_tokens(jsonl, tok, tmp_path):
    (ex,), _ = load_sft_examples(jsonl([GOOD]), tok, cache_dir=tmp_path / "c")
    ids = torch.tensor(ex.input_ids)
    targets, loss_mask = shift_labels(ex.input_ids, ex.labels)
    trained = torch.tensor(ex.labels) != IGNORE_INDEX
    # Position t is trained iff token t+1 is; its target is token t+1; the last position predicts nothing.
    assert torch.equal(loss_mask[:-1].bool(), trained[1:])
    assert torch.equal(targets[:-1][trained[1:]], ids[1:][trained[1:]])
    assert targets[-1] == IGNORE_INDEX and loss_mask[-1] == 0
    assert int(loss_mask.sum()) == int(trained.sum())  # the first token is a header, never trained
    # The token before each EOS (the reply's last token) is what predicts the EOS.
    for p in (ids == tok.eos_token_id).nonzero().flatten().tolist():
        assert targets[p - 1] == tok.eos_token_id and loss_mask[p - 1] == 1


def test_matches_tokenize_chat_on_shipped_data(tok, tmp_path):
    examples, report = load_sft_examples(DATA_DIR / "sft.jsonl", tok, cache_dir=tmp_path / "c")
    assert report.rows == report.examples == len(examples) == 2000
    assert report.skipped.total == report.truncated == report.dropped_no_labels == 0
    assert examples[0].location == f"{DATA_DIR / 'sft.jsonl'}:1" and examples[0].id == "sft-train-00000"
    import json

    with open(DATA_DIR / "sft.jsonl", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert (examples[0].input_ids, examples[0].labels) == tokenize_chat(tok, first["messages"])
    assert report.tokens == sum(len(e) for e in examples)


BAD_ROWS = [
    ("no_assistant_turn", {"messages": [SYSTEM, Q1]}, "no assistant turn"),
    ("unknown_role", {"messages": [{"role": "tool", "content": "x"}, A1]}, "unknown role 'tool'"),
    ("empty_content", {"messages": [Q1, {"role": "assistant", "content": "  "}]}, "empty content"),
    ("wrong_type", {"messages": [Q1, {"role": "assistant", "content": 7}]}, "must be a string"),
    ("wrong_type", {"messages": "hello"}, "must be a list"),
    ("wrong_type", {"messages": [Q1, "hi"]}, "must be a dict"),
    ("empty_messages", {"messages": []}, "is empty"),
    ("missing_field", {"conversation": [Q1, A1]}, "no 'messages'"),
    ("invalid_utf8", b'{"messages": [{"role": "user", "content": "\xff"}]}', "invalid UTF-8"),
    ("invalid_json", '{"messages": [}', "invalid JSON"),
    ("not_an_object", "[1, 2, 3]", "JSON object"),
]


@pytest.mark.parametrize(
    ("reason", "row", "text"), BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_ROWS)]
)
def test_bad_row_raises_data_error_naming_file_and_line(jsonl, tok, tmp_path, reason, row, text):
    path = jsonl([GOOD, row, GOOD])
    with pytest.raises(DataError) as info:
        load_sft_examples(path, tok, cache_dir=tmp_path / "c")
    assert str(info.value).startswith(f"{path}:2: ")
    assert text in str(info.value)


def test_skip_bad_counts_by_reason_and_keeps_good_rows(jsonl, tok, tmp_path):
    rows: list = []
    for i, (_, bad, _) in enumerate(BAD_ROWS):
        rows += [{"id": f"good{i}", "messages": [Q1, A1]}, bad]
    path = jsonl(rows)
    examples, report = load_sft_examples(path, tok, skip_bad=True, cache_dir=tmp_path / "c")
    assert [e.id for e in examples] == [f"good{i}" for i in range(len(BAD_ROWS))]
    assert [e.location for e in examples] == [f"{path}:{2 * i + 1}" for i in range(len(BAD_ROWS))]
    expected: dict[str, int] = {}
    for reason, _, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(report.skipped.counts) == expected
    assert report.skipped.locations["wrong_type"] == [f"{path}:8", f"{path}:10", f"{path}:12"]
    assert report.rows == report.examples == len(BAD_ROWS)


def test_truncation_and_no_label_drops_are_counted(jsonl, tok, tmp_path):
    long_user = {"role": "user", "content": "Tell me about the sea. " * 40}
    long_reply = {"role": "assistant", "content": "The sea is wide and blue. " * 20}
    rows = [
        {"id": "fits", "messages": [Q2, A2]},
        {"id": "cut", "messages": [Q2, long_reply]},  # reply starts early: truncated, kept
        {"id": "nolabel", "messages": [long_user, A2]},  # reply starts after the cut: dropped
    ]
    max_len = 64
    assert len(tokenize_chat(tok, rows[0]["messages"])[0]) <= max_len
    assert len(tokenize_chat(tok, rows[1]["messages"])[0]) > max_len
    assert len(tok.encode(long_user["content"])) > max_len
    path = jsonl(rows)
    examples, report = load_sft_examples(path, tok, max_seq_len=max_len, cache_dir=tmp_path / "c")
    assert [e.id for e in examples] == ["fits", "cut"]
    assert (report.truncated, report.dropped_no_labels, report.dropped_too_long) == (1, 1, 0)
    cut = examples[1]
    full_ids, full_labels = tokenize_chat(tok, rows[1]["messages"])
    assert (cut.input_ids, cut.labels) == (full_ids[:max_len], full_labels[:max_len])

    examples, report = load_sft_examples(
        path, tok, max_seq_len=max_len, truncate="drop", cache_dir=tmp_path / "c"
    )
    assert [e.id for e in examples] == ["fits"]
    assert (report.truncated, report.dropped_no_labels, report.dropped_too_long) == (0, 0, 2)


def test_second_load_hits_the_cache(jsonl, tok, tmp_path, monkeypatch):
    path = jsonl([GOOD, {"id": "b", "messages": [Q1, A1]}])
    cache = tmp_path / "cache"
    first, report1 = load_sft_examples(path, tok, cache_dir=cache)
    assert not report1.cache_hit and report1.cache_file.exists()
    assert report1.cache_file.is_relative_to(cache)

    def boom(*args, **kwargs):
        raise RuntimeError("tokenize_chat called")

    monkeypatch.setattr(sft_module, "tokenize_chat", boom)
    second, report2 = load_sft_examples(path, tok, cache_dir=cache)
    assert report2.cache_hit and report2.cache_file == report1.cache_file
    assert second == first
    # Different settings or contents miss the cache (and so reach the patched tokenizer).
    with pytest.raises(RuntimeError, match="tokenize_chat called"):
        load_sft_examples(path, tok, max_seq_len=100, cache_dir=cache)
    path.write_text(
        path.read_text()
        + '{"messages": [{"role": "user", "content": "x"}, '
        + '{"role": "assistant", "content": "y"}]}\n'
    )
    with pytest.raises(RuntimeError, match="tokenize_chat called"):
        load_sft_examples(path, tok, cache_dir=cache)


def test_several_sources_including_saved_hf_dataset(jsonl, tok, tmp_path):
    path = jsonl([{"id": "j", "messages": [Q1, A1]}])
    Dataset.from_list(
        [{"id": "h0", "messages": [Q2, A2]}, {"id": "h1", "messages": [SYSTEM, Q2, A2]}]
    ).save_to_disk(str(tmp_path / "hf"))
    examples, report = load_sft_examples([path, tmp_path / "hf"], tok, cache_dir=tmp_path / "c")
    assert [e.id for e in examples] == ["j", "h0", "h1"]
    assert [e.location for e in examples] == [f"{path}:1", f"{tmp_path / 'hf'}[0]", f"{tmp_path / 'hf'}[1]"]
    assert (examples[2].input_ids, examples[2].labels) == tokenize_chat(tok, [SYSTEM, Q2, A2])
