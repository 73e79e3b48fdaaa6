"""Reading training rows, reporting bad ones, and caching tokenized datasets.

Every loader in ``megatron_tulu.data`` reads rows through ``read_rows`` (the SFT, preference and RLVR
loaders through ``data/loading.py``, which adds their row parsers) and handles a bad row the same way:

* ``skip_bad=False`` (default): the first bad row raises ``DataError("<location>: <reason>")``, where the
  location is ``"file.jsonl:LINE"`` (1-based line) or ``"dataset_dir[INDEX]"`` for an HF dataset saved
  with ``save_to_disk``. A bad corpus should stop a run before any compute is spent on it.
* ``skip_bad=True``: the row is left out and counted in a ``SkipReport`` (count per reason plus the first
  few locations per reason), which the loaders return, so skipped rows are never silently lost.

Tokenized results are cached through the ``datasets`` Arrow cache (``cached_map``), keyed by a
fingerprint of the file contents, the tokenizer and the loader settings, so a second run with the same
inputs skips tokenization.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_tulu.data.chat_template import ROLES
from megatron_tulu.jsonl import JsonlLineError, jsonl_lines

# Reasons a row is rejected; SkipReport counts by these keys (and jsonl.INVALID_UTF8 / INVALID_JSON).
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_MESSAGES = "empty_messages"
UNKNOWN_ROLE = "unknown_role"
EMPTY_CONTENT = "empty_content"
NO_ASSISTANT_TURN = "no_assistant_turn"
LAST_NOT_ASSISTANT = "last_not_assistant"
PREFIX_MISMATCH = "prefix_mismatch"

PathLike = str | os.PathLike[str]


class DataError(ValueError):
    """A bad input row (or file); the message starts with the row's location."""


class RowError(ValueError):
    """A row-level problem, raised by validators before the location is known.

    ``reason`` is one of the module-level reason keys (what ``SkipReport`` counts); ``detail`` is the
    human-readable message that ends up in ``DataError``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class SkipReport:
    """Rows left out with ``skip_bad=True``: a count per reason and the first locations per reason."""

    max_locations: int = 5
    counts: Counter[str] = field(default_factory=Counter)
    locations: dict[str, list[str]] = field(default_factory=dict)

    def record(self, location: str, reason: str) -> None:
        self.counts[reason] += 1
        seen = self.locations.setdefault(reason, [])
        if len(seen) < self.max_locations:
            seen.append(location)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no rows skipped"
        parts = [
            f"{reason}: {n} (e.g. {', '.join(self.locations.get(reason, []))})"
            for reason, n in sorted(self.counts.items())
        ]
        return f"skipped {self.total} bad rows; " + "; ".join(parts)


def reject(location: str, error: RowError, skip: SkipReport | None) -> None:
    """Raise ``DataError`` for a bad row, or count it when a ``SkipReport`` is given (``skip_bad=True``)."""
    if skip is None:
        raise DataError(f"{location}: {error.detail}") from error
    skip.record(location, error.reason)


def _iter_jsonl(path: Path, skip: SkipReport | None) -> Iterator[tuple[str, Any]]:
    for lineno, _, row in jsonl_lines(path):
        location = f"{path}:{lineno}"
        if isinstance(row, JsonlLineError):
            reject(location, RowError(row.kind, str(row)), skip)
            continue
        if not isinstance(row, dict):
            reject(
                location,
                RowError(NOT_AN_OBJECT, f"row must be a JSON object, got {type(row).__name__}"),
                skip,
            )
            continue
        yield location, row


# Files ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write next to the data.
_SAVE_TO_DISK_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")


def _is_save_to_disk(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _SAVE_TO_DISK_MARKERS)


def parquet_files(path: Path) -> list[Path]:
    """The parquet files of a hub-layout dataset folder, in order.

    The Hugging Face hub layout (what ``huggingface-cli download --repo-type dataset`` or
    ``snapshot_download`` leaves on disk, e.g. allenai/tulu-3-sft-mixture) keeps shards as
    ``data/<split>-00000-of-00004.parquet``. When shards named after a ``train`` split exist only
    they are read (the folder is a training set); otherwise every parquet file below ``path``.
    """
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    train = [p for p in files if p.name.startswith("train-") or p.name == "train.parquet"]
    return train or files


def _iter_parquet(files: Sequence[Path]) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for file in files:
        index = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield f"{file}[{index}]", row
                index += 1


def _iter_hf_disk(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    if not _is_save_to_disk(path):
        files = parquet_files(path)
        if not files:
            raise DataError(
                f"{path}: not a dataset folder: no save_to_disk files ({', '.join(_SAVE_TO_DISK_MARKERS)}) "
                "and no .parquet files (hub layout)"
            )
        yield from _iter_parquet(files)
        return
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        # A DatasetDict saved whole: read its splits in name order, naming the split in the location.
        for split in sorted(loaded):
            for i, row in enumerate(loaded[split]):
                yield f"{path}:{split}[{i}]", row
    else:
        for i, row in enumerate(loaded):
            yield f"{path}[{i}]", row


def read_rows(path: PathLike, skip: SkipReport | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` for a JSONL file, a parquet file, or a dataset folder.

    A folder is read as written by ``Dataset.save_to_disk`` (arrow) or, without those files, as the
    Hugging Face hub layout of parquet shards (``parquet_files``). Blank JSONL lines are ignored. Undecodable or unparsable lines, and lines that are not JSON objects,
    raise ``DataError`` naming file and line, or are counted in ``skip`` when one is given.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        yield from _iter_hf_disk(p)
    elif p.suffix == ".parquet":
        yield from _iter_parquet([p])
    else:
        yield from _iter_jsonl(p, skip)


def check_not_all_skipped(paths: Sequence[Path], valid_rows: int, skip: SkipReport | None) -> None:
    """Raise ``DataError`` when ``skip_bad`` left no row at all, naming what was skipped.

    Training on nothing is never what was meant, and the later "0 rows" message would hide that
    every row was rejected (and why).
    """
    if valid_rows == 0 and skip is not None and skip.total > 0:
        names = ", ".join(str(p) for p in paths)
        raise DataError(f"{names}: no usable rows: every row was bad and skipped; {skip.summary()}")


def as_path_list(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """Accept one path or a sequence of them (a bare string is one path, not a sequence of characters)."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no data paths given")
    return out


def check_messages(
    messages: Any, require_assistant: bool = True, what: str = "messages"
) -> list[dict[str, str]]:
    """Validate a message list like ``chat_template.validate_messages``, but classify the failure.

    Same rules (role in system/user/assistant, content a non-empty string, extra keys dropped), raised as
    ``RowError`` with a reason key so ``SkipReport`` can count bad rows by cause.
    """
    if not isinstance(messages, list):
        raise RowError(WRONG_TYPE, f"{what} must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise RowError(EMPTY_MESSAGES, f"{what} is empty")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"{what}[{i}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str):
            raise RowError(WRONG_TYPE, f"{what}[{i}] role must be a string, got {type(role).__name__}")
        if role not in ROLES:
            raise RowError(UNKNOWN_ROLE, f"{what}[{i}] has unknown role {role!r}; expected one of {ROLES}")
        if "content" not in message:
            raise RowError(MISSING_FIELD, f"{what}[{i}] ({role}) has no 'content'")
        content = message["content"]
        if not isinstance(content, str):
            raise RowError(
                WRONG_TYPE, f"{what}[{i}] ({role}) content must be a string, got {type(content).__name__}"
            )
        if not content.strip():
            raise RowError(EMPTY_CONTENT, f"{what}[{i}] ({role}) has empty content")
        out.append({"role": role, "content": content})
    if require_assistant and not any(m["role"] == "assistant" for m in out):
        raise RowError(NO_ASSISTANT_TURN, f"{what} has no assistant turn, so there is nothing to train on")
    return out


# ----------------------------------------------------------------------------------------------------
# Caching


def default_cache_dir() -> Path:
    """``$MEGATRON_TULU_CACHE`` if set, else ``~/.cache/megatron_tulu``."""
    env = os.environ.get("MEGATRON_TULU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "megatron_tulu"


def _hash_path(h: Any, path: Path) -> None:
    # Contents, not mtimes: copying a file elsewhere still hits, editing one byte misses.
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    for q in files:
        h.update(str(q.relative_to(path) if path.is_dir() else q.name).encode())
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A content hash of a tokenizer: its serialized fast tokenizer plus EOS, else a ``datasets`` hash."""
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__name__}|{tokenizer.eos_token}|{tokenizer.eos_token_id}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        from datasets.fingerprint import Hasher

        h.update(Hasher.hash(tokenizer).encode())
    return h.hexdigest()


def data_fingerprint(kind: str, paths: Sequence[Path], tokenizer: Any, settings: dict[str, Any]) -> str:
    """Cache key for tokenizing ``paths`` with ``tokenizer`` under ``settings`` (32 hex chars).

    32 rather than 64 characters because ``datasets`` appends a ``_00000_of_00004`` shard suffix to the
    fingerprint with ``num_proc`` and rejects fingerprints longer than 64 characters.
    """
    h = hashlib.sha256()
    h.update(kind.encode())
    for p in paths:
        _hash_path(h, p)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:32]


def cached_map(
    records: list[dict[str, Any]],
    function: Callable[..., dict[str, list[Any]]],
    fn_kwargs: dict[str, Any],
    fingerprint: str,
    cache_dir: PathLike | None,
    name: str,
    num_proc: int | None = None,
    desc: str | None = None,
) -> tuple[Any, bool, Path]:
    """Batched ``Dataset.from_list(records).map(function)`` cached at ``cache_dir/name/<fingerprint>.arrow``.

    Returns ``(dataset, cache_hit, cache_file)``. The input rows are dropped from the output, which holds
    only what ``function`` returns. ``datasets`` shows its own tqdm bar while mapping.
    """
    import datasets

    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_root / name / f"{fingerprint}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # A previous run with num_proc > 1 leaves shard files (<fp>_00000_of_00004.arrow); datasets reuses them.
    hit = cache_file.exists() or any(cache_file.parent.glob(f"{fingerprint}_*_of_*.arrow"))
    ds = datasets.Dataset.from_list(records)
    if num_proc is not None and num_proc > max(1, len(records)):
        num_proc = max(1, len(records))
    mapped = ds.map(
        function,
        batched=True,
        batch_size=256,
        fn_kwargs=fn_kwargs,
        remove_columns=ds.column_names,
        cache_file_name=str(cache_file),
        load_from_cache_file=True,
        new_fingerprint=fingerprint,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        desc=desc,
    )
    return mapped, hit, cache_file
