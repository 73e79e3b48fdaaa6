"""Row reading: JSONL and saved HF datasets, locations, and bad-line handling."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from megatron_tulu.data.io import (
    NOT_AN_OBJECT,
    WRONG_TYPE,
    DataError,
    RowError,
    SkipReport,
    as_path_list,
    read_rows,
)
from megatron_tulu.data.loading import ParsedRow, parse_rows
from megatron_tulu.jsonl import INVALID_JSON, INVALID_UTF8


def test_jsonl_locations_count_blank_lines(jsonl):
    path = jsonl([{"a": 1}, "", {"a": 2}, "   ", {"a": 3}])
    rows = list(read_rows(path))
    assert rows == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"a": 2}), (f"{path}:5", {"a": 3})]


def test_utf8_bom_on_first_line_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert list(read_rows(path)) == [(f"{path}:1", {"a": 1})]


@pytest.mark.parametrize(
    ("line", "reason", "text"),
    [
        (b'{"a": "caf\xe9"}', INVALID_UTF8, "invalid UTF-8"),
        (b'{"a": 1,}', INVALID_JSON, "invalid JSON"),
        (b'{"a": ', INVALID_JSON, "invalid JSON"),
        (b"[1, 2]", NOT_AN_OBJECT, "JSON object"),
    ],
)
def test_bad_line_raises_with_file_and_line(jsonl, line, reason, text):
    path = jsonl([{"a": 1}, {"a": 2}, line, {"a": 4}])
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert text in str(info.value)

    skip = SkipReport()
    rows = list(read_rows(path, skip))
    assert [r for _, r in rows] == [{"a": 1}, {"a": 2}, {"a": 4}]
    assert dict(skip.counts) == {reason: 1}
    assert skip.locations == {reason: [f"{path}:3"]}


def test_skip_report_keeps_first_locations_and_counts_all():
    skip = SkipReport(max_locations=2)
    for i in range(5):
        skip.record(f"f:{i}", "invalid_json")
    skip.record("f:9", "no_assistant_turn")
    assert skip.total == 6
    assert skip.counts["invalid_json"] == 5
    assert skip.locations["invalid_json"] == ["f:0", "f:1"]
    assert "invalid_json: 5" in skip.summary() and "no_assistant_turn: 1" in skip.summary()
    assert SkipReport().summary() == "no rows skipped"


def test_saved_hf_dataset(tmp_path):
    rows = [{"x": i, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    got = list(read_rows(tmp_path / "ds"))
    assert [loc for loc, _ in got] == [f"{tmp_path / 'ds'}[{i}]" for i in range(3)]
    assert [r["x"] for _, r in got] == [0, 1, 2]
    assert got[1][1]["messages"] == [{"role": "user", "content": "q1"}]


def test_saved_hf_dataset_dict_names_split(tmp_path):
    dd = DatasetDict(
        {"train": Dataset.from_list([{"x": 1}]), "test": Dataset.from_list([{"x": 2}, {"x": 3}])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    got = list(read_rows(tmp_path / "dd"))
    base = tmp_path / "dd"
    assert got == [
        (f"{base}:test[0]", {"x": 2}),
        (f"{base}:test[1]", {"x": 3}),
        (f"{base}:train[0]", {"x": 1}),
    ]


def test_missing_path_and_path_lists(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_rows(tmp_path / "nope.jsonl"))
    assert as_path_list("a.jsonl") == [as_path_list(["a.jsonl"])[0]]
    assert len(as_path_list(["a", "b"])) == 2
    with pytest.raises(ValueError):
        as_path_list([])


def _parse_x(row):
    if not isinstance(row.get("x"), int):
        raise RowError(WRONG_TYPE, "x must be an integer")
    return row["x"] * 10


def test_parse_rows_keeps_location_and_id_and_reports_bad_rows(jsonl, tmp_path):
    """The one row loop of the SFT, preference and RLVR loaders (data/loading.py)."""
    a = jsonl([{"x": 1, "id": 7}, {"x": "no"}, "nope"], name="a.jsonl")
    b = jsonl([{"x": 2}], name="b.jsonl")
    skip = SkipReport()
    got = parse_rows([a, b], _parse_x, skip)
    assert got == [ParsedRow(f"{a}:1", "7", 10), ParsedRow(f"{b}:1", None, 20)]
    assert skip.counts == {WRONG_TYPE: 1, INVALID_JSON: 1} and skip.locations[WRONG_TYPE] == [f"{a}:2"]
    with pytest.raises(DataError, match=f"^{a}:2: x must be an integer$"):
        parse_rows(a, _parse_x, None)
    bad = jsonl([{"x": "no"}], name="bad.jsonl")
    with pytest.raises(DataError, match="no usable rows: every row was bad and skipped"):
        parse_rows(bad, _parse_x, SkipReport())
