"""The Tülu 3 chat template, in pure Python and as Jinja, and label-masked tokenization of conversations.

Template (tulu3-facts §1, exact string from open-instruct):

* system: ``"<|system|>\\n" + content + "\\n"``
* user: ``"<|user|>\\n" + content + "\\n"``
* assistant, not the last message: ``"<|assistant|>\\n" + content + eos + "\\n"``
* assistant, last message: ``"<|assistant|>\\n" + content + eos`` (no trailing newline)
* generation prompt: ``"<|assistant|>\\n"``; no BOS anywhere.

Labels (as in the Tülu 3 SFT code): -100 on system and user turns and on every ``<|assistant|>\\n`` header;
the assistant content and the EOS that closes each assistant turn (final or not) are trained. The ``"\\n"``
after a non-final assistant EOS is not trained.

This module imports nothing heavy, so data pipelines and the CLI can use it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

IGNORE_INDEX = -100
DEFAULT_EOS = "<|end_of_text|>"
ROLES = ("system", "user", "assistant")
ROLE_HEADERS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
GENERATION_PROMPT = ROLE_HEADERS["assistant"]

# The same template in Jinja, stored in tokenizer_config.json as `chat_template`. Whitespace control (`-`)
# everywhere keeps the template's own layout out of the output; only the quoted strings are emitted.
TULU_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if not loop.last -%}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- else -%}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- if loop.last and add_generation_prompt -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class ChatFormatError(ValueError):
    """A conversation that does not fit the Tülu template. Callers prefix the file/line they read it from."""


class _Tokenizer(Protocol):
    """The slice of an HF tokenizer that ``tokenize_chat`` uses."""

    eos_token: str | None
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def validate_messages(messages: Any, require_assistant: bool = False) -> list[dict[str, str]]:
    """Check the message list and return it as plain ``{"role", "content"}`` dicts.

    Extra keys on a message are ignored (datasets often carry e.g. ``"name"``), but the role must be one
    of system/user/assistant and the content a non-empty string: an empty turn would silently become a
    bare header, which trains the model on nothing or teaches it to emit empty replies.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ChatFormatError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    if len(messages) == 0:
        raise ChatFormatError("messages is empty")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(
                f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(
                f"message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if "content" not in message:
            raise ChatFormatError(f"message {i} ({role}) has no 'content'")
        content = message["content"]
        if not isinstance(content, str):
            raise ChatFormatError(
                f"message {i} ({role}) content must be a string, got {type(content).__name__}"
                " (multimodal/structured content is not supported)"
            )
        if not content.strip():
            raise ChatFormatError(f"message {i} ({role}) has empty content")
        out.append({"role": role, "content": content})
    if require_assistant and not any(m["role"] == "assistant" for m in out):
        raise ChatFormatError("conversation has no assistant turn, so there is nothing to train on")
    return out


def render_tulu(
    messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False, eos_token: str = DEFAULT_EOS
) -> str:
    """Render a conversation with the Tülu 3 template (the pure-Python twin of ``TULU_CHAT_TEMPLATE``)."""
    msgs = validate_messages(messages)
    parts: list[str] = []
    for i, message in enumerate(msgs):
        role, content = message["role"], message["content"]
        if role == "assistant":
            parts.append(ROLE_HEADERS[role] + content + eos_token)
            if i != len(msgs) - 1:
                parts.append("\n")
        else:
            parts.append(ROLE_HEADERS[role] + content + "\n")
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def chat_segments(messages: Sequence[dict[str, Any]], eos_token: str = DEFAULT_EOS) -> list[tuple[str, bool]]:
    """Split the rendered conversation into ``(text, trained)`` pieces whose concatenation is ``render_tulu``.

    Adjacent untrained pieces are merged, so the list alternates between prompt-like text and assistant
    replies (each reply followed by its EOS as a separate trained piece).
    """
    msgs = validate_messages(messages, require_assistant=True)
    segments: list[tuple[str, bool]] = []

    def add(text: str, trained: bool) -> None:
        if not trained and segments and not segments[-1][1]:
            segments[-1] = (segments[-1][0] + text, False)
        else:
            segments.append((text, trained))

    for i, message in enumerate(msgs):
        role, content = message["role"], message["content"]
        if role == "assistant":
            add(ROLE_HEADERS[role], False)
            add(content, True)
            add(eos_token, True)
            if i != len(msgs) - 1:
                add("\n", False)
        else:
            add(ROLE_HEADERS[role] + content + "\n", False)
    return segments


def tokenize_chat(
    tokenizer: _Tokenizer, messages: Sequence[dict[str, Any]], max_seq_len: int | None = None
) -> tuple[list[int], list[int]]:
    """Tokenize a conversation for SFT and return ``(input_ids, labels)`` of equal length.

    Each segment from ``chat_segments`` is tokenized on its own and the ids are concatenated, so every
    token belongs to exactly one segment and its label is exact. The EOS closing each assistant turn is
    appended as ``tokenizer.eos_token_id`` rather than encoded from text, which keeps it a single token
    for any tokenizer.

    Relation to tokenizing the whole rendered string: segment boundaries coincide with the role/EOS tokens
    (added tokens, which split the text before pre-tokenization) except for one: between the
    ``<|assistant|>\\n`` header and the reply. There the header's ``"\\n"`` is always its own token. If a
    reply itself starts with whitespace, whole-string byte-level BPE would merge that whitespace with the
    header's newline; we deliberately keep them apart, because at generation time the prompt ends with
    ``"<|assistant|>\\n"`` tokenized alone, so training then sees exactly the token boundary the model
    generates from. For replies that do not start with whitespace the two tokenizations are identical.

    ``max_seq_len`` truncates on the right (as the Tülu SFT code does). A truncated example may end up with
    no trained label at all; callers should drop such examples (``has_trainable_labels``).
    """
    eos_token, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos_token is None or eos_id is None:
        raise ChatFormatError(
            "tokenizer has no eos_token; the Tülu template needs one to end assistant turns"
        )
    if max_seq_len is not None and max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
    input_ids: list[int] = []
    labels: list[int] = []
    segments = chat_segments(messages, eos_token=eos_token)
    for text, trained in segments:
        # The EOS piece is always trained and on its own; any other piece is encoded as text.
        ids = (
            [eos_id] if (trained and text == eos_token) else tokenizer.encode(text, add_special_tokens=False)
        )
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    if max_seq_len is not None:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return input_ids, labels


def has_trainable_labels(labels: Sequence[int]) -> bool:
    """False for examples whose labels are all masked (the Tülu SFT code drops those)."""
    return any(label != IGNORE_INDEX for label in labels)
