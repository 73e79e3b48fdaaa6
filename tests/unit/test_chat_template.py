"""The Tülu 3 chat template: Python renderer vs the tokenizer's Jinja template, and SFT label masking."""

from __future__ import annotations

import json

import pytest

from megatron_tulu.data.chat_template import (
    IGNORE_INDEX,
    ChatFormatError,
    chat_segments,
    has_trainable_labels,
    render_tulu,
    tokenize_chat,
)
from megatron_tulu.data.tokenizer import DATA_DIR, EOS_TOKEN, build_tokenizer, load_tokenizer, save_tokenizer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
Q1 = {"role": "user", "content": "Sam has 12 apples and buys 7 more. How many apples does Sam have?"}
A1 = {"role": "assistant", "content": "Sam starts with 12 apples. 12 + 7 = 19.\n#### 19"}
Q2 = {"role": "user", "content": "Write a short sentence about the sea in all lowercase letters."}
A2 = {"role": "assistant", "content": "the sea is calm and blue."}

CONVERSATIONS = {
    "single": [Q1, A1],
    "system_single": [SYSTEM, Q1, A1],
    "multi": [Q1, A1, Q2, A2],
    "system_multi": [SYSTEM, Q1, A1, Q2, A2],
    "prompt_only": [Q1],
    "system_prompt_only": [SYSTEM, Q1],
    "multi_ending_with_user": [SYSTEM, Q1, A1, Q2],
}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def saved_tok(tmp_path_factory):
    return load_tokenizer(save_tokenizer(tmp_path_factory.mktemp("tok")))


def test_render_exact_strings():
    assert (
        render_tulu([Q1, A1]) == f"<|user|>\n{Q1['content']}\n<|assistant|>\n{A1['content']}<|end_of_text|>"
    )
    assert render_tulu([SYSTEM, Q1, A1, Q2, A2]) == (
        f"<|system|>\n{SYSTEM['content']}\n"
        f"<|user|>\n{Q1['content']}\n"
        f"<|assistant|>\n{A1['content']}<|end_of_text|>\n"
        f"<|user|>\n{Q2['content']}\n"
        f"<|assistant|>\n{A2['content']}<|end_of_text|>"
    )
    assert render_tulu([Q1], add_generation_prompt=True) == f"<|user|>\n{Q1['content']}\n<|assistant|>\n"
    assert render_tulu([Q1, A1], eos_token="</s>").endswith("#### 19</s>")
    # No BOS anywhere in the template.
    assert "<|begin_of_text|>" not in render_tulu([SYSTEM, Q1, A1, Q2, A2], add_generation_prompt=True)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("which", ["built", "saved"])
def test_renderer_matches_apply_chat_template(tok, saved_tok, name, add_generation_prompt, which):
    t = tok if which == "built" else saved_tok
    messages = CONVERSATIONS[name]
    expected = render_tulu(messages, add_generation_prompt=add_generation_prompt)
    assert (
        t.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        == expected
    )
    ids = t.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    assert ids == t.encode(expected, add_special_tokens=False)
    # The tokenizer adds no BOS on its own either, so plain encoding of the rendered text is the same.
    assert ids == t(expected)["input_ids"]


def test_jinja_template_rejects_unknown_role(tok):
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_segments_concatenate_to_rendering():
    for messages in (CONVERSATIONS["single"], CONVERSATIONS["system_multi"]):
        segments = chat_segments(messages)
        assert "".join(text for text, _ in segments) == render_tulu(messages)
        trained = [text for text, trained in segments if trained]
        assert trained == [m for a in messages if a["role"] == "assistant" for m in (a["content"], EOS_TOKEN)]


def _label_runs(input_ids, labels):
    """Maximal runs of trained positions, as lists of ids."""
    runs, cur = [], []
    for tid, lab in zip(input_ids, labels):
        if lab == IGNORE_INDEX:
            if cur:
                runs.append(cur)
                cur = []
        else:
            assert lab == tid
            cur.append(tid)
    if cur:
        runs.append(cur)
    return runs


def test_label_masking_multi_turn_with_system(tok):
    messages = CONVERSATIONS["system_multi"]
    input_ids, labels = tokenize_chat(tok, messages)
    assert len(input_ids) == len(labels)
    role_ids = {tok.convert_tokens_to_ids(t) for t in ("<|system|>", "<|user|>", "<|assistant|>")}
    newline_id = tok.encode("\n", add_special_tokens=False)[0]
    for i, (tid, lab) in enumerate(zip(input_ids, labels)):
        if tid in role_ids:
            assert lab == IGNORE_INDEX, "role tokens are never trained"
            # The "\n" of every header is masked too.
            assert input_ids[i + 1] == newline_id and labels[i + 1] == IGNORE_INDEX
    # Exactly the assistant replies (each followed by its EOS) are trained, nothing else.
    runs = _label_runs(input_ids, labels)
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(assistants)
    for run, content in zip(runs, assistants):
        assert run[-1] == tok.eos_token_id
        assert tok.decode(run[:-1]) == content
    # Every assistant turn's EOS is labelled, including the non-final one; the "\n" after it is not.
    eos_positions = [i for i, t in enumerate(input_ids) if t == tok.eos_token_id]
    assert len(eos_positions) == 2
    assert all(labels[i] == tok.eos_token_id for i in eos_positions)
    assert input_ids[eos_positions[0] + 1] == newline_id and labels[eos_positions[0] + 1] == IGNORE_INDEX
    assert eos_positions[-1] == len(input_ids) - 1
    # System and user content is masked: decoding the masked tokens gives the prompt text back.
    masked_text = tok.decode([t for t, lab in zip(input_ids, labels) if lab == IGNORE_INDEX])
    assert SYSTEM["content"] in masked_text and Q1["content"] in masked_text and Q2["content"] in masked_text
    assert A1["content"] not in masked_text


def test_segmented_tokenization_equals_whole_string_on_shipped_data(tok):
    """For replies that do not start with whitespace (all shipped data), labels come at no cost in ids."""
    with open(DATA_DIR / "sft.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) >= 1000
    for row in rows:
        input_ids, _ = tokenize_chat(tok, row["messages"])
        assert input_ids == tok.encode(render_tulu(row["messages"]), add_special_tokens=False), row["id"]


def test_leading_whitespace_reply_keeps_header_newline_separate(tok):
    """The documented difference: whole-string BPE would merge the header "\\n" with a reply's leading space."""
    messages = [Q1, {"role": "assistant", "content": "\n\nHello there."}]
    input_ids, labels = tokenize_chat(tok, messages)
    newline_id = tok.encode("\n", add_special_tokens=False)[0]
    header_at = input_ids.index(tok.convert_tokens_to_ids("<|assistant|>"))
    assert input_ids[header_at + 1] == newline_id and labels[header_at + 1] == IGNORE_INDEX
    assert labels[header_at + 2] != IGNORE_INDEX
    # Same text either way, and the generation-time prompt ends with exactly the same two tokens.
    assert tok.decode(input_ids) == render_tulu(messages)
    prompt_ids = tok.encode(render_tulu([Q1], add_generation_prompt=True), add_special_tokens=False)
    assert input_ids[: len(prompt_ids)] == prompt_ids


def test_truncation(tok):
    messages = CONVERSATIONS["system_multi"]
    full_ids, full_labels = tokenize_chat(tok, messages)
    for n in (1, 5, len(full_ids) // 2, len(full_ids) - 1):
        ids, labels = tokenize_chat(tok, messages, max_seq_len=n)
        assert ids == full_ids[:n] and labels == full_labels[:n]
    assert tokenize_chat(tok, messages, max_seq_len=10_000) == (full_ids, full_labels)
    # Cutting inside the first prompt leaves nothing to train; callers drop such examples.
    _, labels = tokenize_chat(tok, messages, max_seq_len=3)
    assert not has_trainable_labels(labels)
    assert has_trainable_labels(full_labels)
    with pytest.raises(ValueError):
        tokenize_chat(tok, messages, max_seq_len=0)


BAD_INPUTS = {
    "no_assistant": ([SYSTEM, Q1], "no assistant turn"),
    "unknown_role": ([{"role": "tool", "content": "x"}, A1], "unknown role 'tool'"),
    "missing_role": ([{"content": "x"}, A1], "unknown role None"),
    "empty_content": ([{"role": "user", "content": ""}, A1], "empty content"),
    "whitespace_content": ([Q1, {"role": "assistant", "content": "  \n"}], "empty content"),
    "non_string_content": (
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, A1],
        "must be a string",
    ),
    "none_content": ([Q1, {"role": "assistant", "content": None}], "must be a string"),
    "missing_content": ([{"role": "user"}, A1], "has no 'content'"),
    "not_a_dict": (["hello", A1], "must be a dict"),
    "empty_list": ([], "empty"),
    "not_a_list": ("<|user|>\nhi", "must be a list"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_raise_chat_format_error(tok, name):
    messages, message = BAD_INPUTS[name]
    with pytest.raises(ChatFormatError, match=message.replace("(", r"\(")):
        tokenize_chat(tok, messages)
    # The renderer checks the same things, except that a prompt without an assistant turn is fine.
    if name == "no_assistant":
        assert render_tulu(messages, add_generation_prompt=True).endswith("<|assistant|>\n")
    else:
        with pytest.raises(ChatFormatError):
            render_tulu(messages)


def test_chat_format_error_is_a_value_error():
    assert issubclass(ChatFormatError, ValueError)
