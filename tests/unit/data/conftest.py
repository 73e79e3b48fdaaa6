"""Shared fixtures for the data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from megatron_tulu.data.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def tok():
    return build_tokenizer()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows one per line: dicts as JSON, ``bytes``/``str`` verbatim (to plant broken lines)."""
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row)
            elif isinstance(row, str):
                f.write(row.encode("utf-8"))
            else:
                f.write(json.dumps(row, ensure_ascii=False).encode("utf-8"))
            f.write(b"\n")
    return path


@pytest.fixture
def jsonl(tmp_path):
    """``jsonl(rows, name=...)`` writes a JSONL file under tmp_path and returns its path."""

    def make(rows: list[Any], name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, rows)

    return make
