"""The loading the SFT, preference and RLVR loaders share: rows read and parsed, then tokenized.

``parse_rows`` reads every row of the input files (``io.read_rows``: JSONL, parquet or a dataset
folder) through a loader's own row parser, so a bad row is reported the same way in every loader:
``DataError`` naming its file and line, or, with ``skip_bad``, counted in a ``SkipReport``; a file
whose rows were all bad is an error either way. ``TokenizingLoader`` adds the tokenization through
the ``datasets`` cache (``io.cached_map``) that the SFT and preference loaders share; the RLVR
loader tokenizes its prompts itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from megatron_tulu.data.io import (
    PathLike,
    RowError,
    SkipReport,
    as_path_list,
    cached_map,
    check_not_all_skipped,
    data_fingerprint,
    read_rows,
    reject,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ParsedRow(Generic[T]):
    """A row a loader's parser accepted: where it was read, its ``id`` (as a string) and the parse."""

    location: str
    id: str | None
    value: T


def parse_rows(
    paths: PathLike | Sequence[PathLike], parse: Callable[[dict[str, Any]], T], skip: SkipReport | None
) -> list[ParsedRow[T]]:
    """Every row of ``paths`` (one or several, in order, through ``read_rows``) that ``parse`` accepts.

    ``parse`` raises ``RowError`` for a bad row, which then raises ``DataError`` naming its location
    or, with a ``SkipReport``, is counted; when every row was bad and skipped, ``DataError`` too
    (``check_not_all_skipped``).
    """
    path_list = as_path_list(paths)
    parsed: list[ParsedRow[T]] = []
    for path in path_list:
        for location, row in read_rows(path, skip):
            try:
                value = parse(row)
            except RowError as e:
                reject(location, e, skip)
                continue
            parsed.append(ParsedRow(location, None if row.get("id") is None else str(row["id"]), value))
    check_not_all_skipped(path_list, len(parsed), skip)
    return parsed


@dataclass
class LoadReport:
    """What a tokenizing loader did with the rows it read; each loader's report adds its own counts."""

    rows: int = 0  # valid rows tokenized
    skipped: SkipReport = field(default_factory=SkipReport)
    cache_hit: bool = False
    cache_file: Path | None = None

    def skips_and_cache(self) -> str:
        """The end of a loader's summary line."""
        return f"{self.skipped.summary()}; cache {'hit' if self.cache_hit else 'miss'}"


@dataclass(frozen=True)
class TokenizingLoader(Generic[T]):
    """One kind of rows (SFT conversations, preference pairs): parsed, tokenized, cached.

    ``parse`` validates a row (``RowError`` if bad), ``record`` turns what it returns into the
    record ``tokenize`` sees in its batches (``tokenize(batch, tokenizer=..., **options)``, batched
    ``datasets.map``). ``kind`` names the cache folder and, with ``version``, the fingerprint: bump
    ``version`` when the tokenized output for the same inputs changes, so stale caches are not reused.
    """

    kind: str
    parse: Callable[[dict[str, Any]], T]
    record: Callable[[T], dict[str, Any]]
    tokenize: Callable[..., dict[str, list[Any]]]
    version: int
    desc: str

    def load(
        self,
        paths: PathLike | Sequence[PathLike],
        tokenizer: Any,
        options: dict[str, Any],
        report: LoadReport,
        skip_bad: bool,
        cache_dir: PathLike | None,
        num_proc: int | None,
    ) -> tuple[list[ParsedRow[T]], dict[str, list[Any]]]:
        """``(rows, {column: values})``: the valid rows of ``paths`` (``parse_rows``; bad rows counted
        in ``report.skipped`` with ``skip_bad``) and what ``tokenize`` made of them, row ``i`` at
        index ``i`` of every column; ``report`` also gets the row count and the cache outcome."""
        path_list = as_path_list(paths)
        rows = parse_rows(path_list, self.parse, report.skipped if skip_bad else None)
        report.rows = len(rows)
        if not rows:
            return rows, {}
        fingerprint = data_fingerprint(self.kind, path_list, tokenizer, {**options, "v": self.version})
        ds, report.cache_hit, report.cache_file = cached_map(
            [self.record(row.value) for row in rows],
            self.tokenize,
            {"tokenizer": tokenizer, **options},
            fingerprint,
            cache_dir,
            self.kind,
            num_proc,
            self.desc,
        )
        # Arrow -> Python in one go per column; row-by-row access is much slower.
        return rows, {name: ds.data.column(name).to_pylist() for name in ds.column_names}
