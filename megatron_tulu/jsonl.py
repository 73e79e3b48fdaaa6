"""JSON Lines read the way every reader here needs it: bytes decoded line by line, so a bad byte
or a truncated row is reported with its file and line (a text-mode read fails on the first bad
byte with a bare UnicodeDecodeError, and errors="replace" would train on mojibake). Each caller
decides whether a bad line is an error or a counted skip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from os import PathLike
from typing import Any

INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"


class JsonlLineError(ValueError):
    """A line that is not UTF-8 (``kind`` INVALID_UTF8) or not JSON (INVALID_JSON)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def jsonl_lines(path: str | PathLike) -> Iterator[tuple[int, str, Any]]:
    """``(line number, decoded text, parsed value or JsonlLineError)`` for every non-blank line;
    a UTF-8 byte order mark on line 1 is dropped."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line_number,
                    "",
                    JsonlLineError(INVALID_UTF8, f"invalid UTF-8 at byte {exc.start} of the line"),
                )
                continue
            try:
                # Without its line ending, so that an error at the end of a truncated line reports
                # that line's last column (with the "\n" json reports "line 2 column 1").
                value = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                value = JsonlLineError(INVALID_JSON, f"invalid JSON: {exc.msg} at column {exc.colno}")
            yield line_number, text, value
