"""Tülu 3's released data formats (SFT mixture, preference mixture, RLVR mixture) from JSONL,
`save_to_disk` folders and the hub parquet layout, plus the RLVR prompt loader's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_tulu.data.io import DataError, SkipReport, read_rows
from megatron_tulu.data.preference import load_preference_examples
from megatron_tulu.data.rlvr_prompts import load_rlvr_prompts
from megatron_tulu.data.sft import load_sft_examples
from megatron_tulu.rewards import verify_sample

FIXTURES = Path(__file__).resolve().parents[3] / "megatron_tulu" / "assets" / "data" / "tulu3"
SFT = FIXTURES / "sft_mixture.jsonl"
PREFERENCES = FIXTURES / "preference_mixture.jsonl"
RLVR = FIXTURES / "rlvr_mixture.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _hub_layout(rows: list[dict], root: Path) -> Path:
    """A folder as the hub stores a dataset: README plus data/<split>-0000i-of-0000n.parquet."""
    import datasets

    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: odc-by\n---\n")
    half = len(rows) // 2
    datasets.Dataset.from_list(rows[:half]).to_parquet(str(root / "data" / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_list(rows[half:]).to_parquet(str(root / "data" / "train-00001-of-00002.parquet"))
    # Another split in the same folder is not training data and must not be read.
    datasets.Dataset.from_list(rows[:1]).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def _save_to_disk(rows: list[dict], root: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(root))
    return root


@pytest.fixture(params=["jsonl", "save_to_disk", "hub_parquet"])
def layout(request, tmp_path):
    """``layout(fixture_path)`` -> the same rows in the requested on-disk layout."""

    def make(path: Path) -> Path:
        if request.param == "jsonl":
            return path
        rows = _rows(path)
        if request.param == "save_to_disk":
            return _save_to_disk(rows, tmp_path / "saved")
        return _hub_layout(rows, tmp_path / "hub")

    return make


def test_sft_mixture_schema_in_every_layout(layout, tok, tmp_path):
    rows = _rows(SFT)
    assert all(set(row) == {"id", "messages", "source"} for row in rows)  # the published columns
    examples, report = load_sft_examples(layout(SFT), tok, max_seq_len=512, cache_dir=tmp_path / "c")
    reference, _ = load_sft_examples(SFT, tok, max_seq_len=512, cache_dir=tmp_path / "c")
    assert report.examples == len(rows) and report.skipped.total == 0
    assert [e.id for e in examples] == [row["id"] for row in rows]
    assert [e.input_ids for e in examples] == [e.input_ids for e in reference]


def test_preference_mixture_schema_in_every_layout(layout, tok, tmp_path):
    rows = _rows(PREFERENCES)
    assert {"id", "chosen", "rejected", "source"} <= set(rows[0]) and "prompt" in rows[0]
    assert any("prompt" not in row for row in rows)  # `prompt` is optional
    pairs, report = load_preference_examples(
        layout(PREFERENCES), tok, max_seq_len=256, cache_dir=tmp_path / "c"
    )
    assert report.pairs == len(rows) and report.skipped.total == 0
    for pair, row in zip(pairs, rows):
        reply = row["chosen"][-1]["content"]
        chosen = pair.chosen_input_ids[pair.prompt_len :]
        assert tok.decode(chosen, skip_special_tokens=True).strip() == reply
        assert pair.chosen_input_ids[: pair.prompt_len] == pair.rejected_input_ids[: pair.prompt_len]


def test_rlvr_mixture_in_every_layout_matches_the_jsonl(layout, tok):
    rows = _rows(RLVR)
    assert all(
        set(row) == {"messages", "ground_truth", "dataset", "constraint_type", "constraint"} for row in rows
    )
    prompts = load_rlvr_prompts([layout(RLVR)], tok, max_prompt_len=64)
    assert [p["dataset"] for p in prompts] == [row["dataset"] for row in rows]
    assert [p["ground_truth"] for p in prompts] == [row["ground_truth"] for row in rows]
    assert [p["prompt"] for p in prompts] == [row["messages"][-1]["content"] for row in rows]
    assert prompts == load_rlvr_prompts([RLVR], tok, max_prompt_len=64)
    assert {p["dataset"] for p in prompts} == {"gsm8k", "MATH", "ifeval"}


def test_rlvr_prompts_are_left_truncated(tmp_path, tok):
    long = {"messages": [{"role": "user", "content": "word " * 200}], "ground_truth": "1", "dataset": "gsm8k"}
    path = _write_rows(tmp_path, [long])
    (full,) = load_rlvr_prompts([path], tok, max_prompt_len=10_000)
    (cut,) = load_rlvr_prompts([path], tok, max_prompt_len=8)
    assert len(full["ids"]) > 8 and cut["ids"] == full["ids"][-8:]  # the end, next to the answer


def _write_rows(directory: Path, rows: list) -> Path:
    path = directory / "rows.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# Hand-written responses that satisfy (1) or break (0) each fixture row's ground truth.
RESPONSES = {
    "12": ("4 pens in 3 boxes: 3 * 4 = 12", "It is 13"),
    "24": ("15 + 9 = 24 cakes", "15 cakes"),
    "13": ("20 - 7 = 13", "20 - 7 = 12"),
    "\\frac{3}{4}": ("So the sum is $\\boxed{\\frac{3}{4}}$.", "I think it is 3 or maybe 4"),
    "4": ("Final Answer: The final answer is 4. I hope it is correct.", "2x = 8, then 1 2 3 4"),
    "7": ("$\\sqrt{49} = 7$", "$\\sqrt{49} = 6$"),
    "verify_keyword_frequency": ("The moon is bright. I love the moon. Moon!", "The moon is bright."),
    "validate_lowercase": ("a river runs to the sea.", "A river runs to the sea."),
    "validate_no_commas": ("a tree is a tall plant", "a tree is tall, green"),
    "validate_word_constraint": ("the city glows at night", "bright lights"),
    "validate_end": (
        "bread is baked. Is there anything else I can help with?",
        "Is there anything else I can help with? bread.",
    ),
    "verify_bullet_points": ("* apple\n* pear\n* plum", "* apple\n* pear"),
}


def test_every_rlvr_fixture_row_is_scored_by_its_verifier():
    for row in _rows(RLVR):
        gt = row["ground_truth"]
        key = json.loads(gt)["func_name"] if row["dataset"] == "ifeval" else gt
        good, bad = RESPONSES[key]
        prompt = row["messages"][-1]["content"]
        assert verify_sample(good, gt, row["dataset"], prompt, time_limit=None).score == 1.0, (key, good)
        assert verify_sample(bad, gt, row["dataset"], prompt, time_limit=None).score == 0.0, (key, bad)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": [{"role": "user", "content": "q"}], "ground_truth": "1"}, "no 'dataset' field"),
        ({"messages": [{"role": "user", "content": "q"}], "dataset": "gsm8k"}, "no 'ground_truth' field"),
        (
            {"messages": [{"role": "user", "content": "q"}], "ground_truth": "1", "dataset": "gsm9k"},
            "no verifier registered for dataset 'gsm9k'",
        ),
        (
            {
                "messages": [{"role": "user", "content": "q"}],
                "ground_truth": '{"func_name": "nope"}',
                "dataset": "ifeval",
            },
            "unknown IF function 'nope'",
        ),
        (
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "ground_truth": "1",
                "dataset": "gsm8k",
            },
            "must end with the user turn",
        ),
        ({"messages": [], "ground_truth": "1", "dataset": "gsm8k"}, "messages is empty"),
    ],
)
def test_rlvr_bad_rows_name_file_and_line(tmp_path, tok, row, message):
    good = _rows(RLVR)[0]
    path = _write_rows(tmp_path, [good, row])
    with pytest.raises(DataError, match=f"^{path}:2: .*{message}"):
        load_rlvr_prompts([path], tok, max_prompt_len=64)


def test_rlvr_skip_bad_counts_and_all_bad_is_an_error(tmp_path, tok):
    good = _rows(RLVR)[0]
    bad = {"messages": [{"role": "user", "content": "q"}], "ground_truth": "1", "dataset": "nope"}
    path = _write_rows(tmp_path, [good, bad, "{broken", good])
    report = SkipReport()
    prompts = load_rlvr_prompts([path], tok, max_prompt_len=64, skip_bad=True, skip=report)
    assert len(prompts) == 2
    assert report.counts == {"unknown_dataset": 1, "invalid_json": 1}
    all_bad = _write_rows(tmp_path, [bad, "{broken"])
    with pytest.raises(DataError, match="no usable rows: every row was bad and skipped; skipped 2 bad rows"):
        load_rlvr_prompts([all_bad], tok, max_prompt_len=64, skip_bad=True)


def test_sft_all_rows_bad_with_skip_bad_reports_the_skips(tmp_path, tok):
    path = _write_rows(tmp_path, ["{nope", {"messages": []}])
    with pytest.raises(
        DataError,
        match=r"every row was bad and skipped; skipped 2 bad rows; empty_messages: 1 .*invalid_json: 1",
    ):
        load_sft_examples(path, tok, skip_bad=True, cache_dir=tmp_path / "c")


def test_truncated_jsonl_line_reports_its_last_column(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}]})[:-1]  # closing brace lost
    path = _write_rows(tmp_path, [line])
    with pytest.raises(DataError, match=f"^{path}:1: invalid JSON: .* at column {len(line) + 1}$"):
        list(read_rows(path))


def test_folder_without_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset folder"):
        list(read_rows(tmp_path / "empty"))


def test_single_parquet_file(tmp_path):
    root = _hub_layout(_rows(SFT), tmp_path / "hub")
    shard = root / "data" / "train-00000-of-00002.parquet"
    rows = list(read_rows(shard))
    assert [r["id"] for _, r in rows] == [r["id"] for r in _rows(SFT)[: len(rows)]]
    assert rows[0][0] == f"{shard}[0]"
