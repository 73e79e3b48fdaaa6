"""`megatron-tulu verify`: good file, malformed rows, --skip-bad, options, atomic output."""

import json

import pytest

from megatron_tulu.commands.verify import main

IFEVAL_GT = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
GOOD_ROWS = [
    {
        "prompt": "q1",
        "response": "So it is 72.",
        "ground_truth": "72",
        "dataset": "gsm8k",
        "finish_reason": "stop",
    },
    {"prompt": "q2", "response": r"\boxed{\frac12}", "ground_truth": "0.5", "dataset": "MATH"},
    {"prompt": "q3", "response": "no commas", "ground_truth": json.dumps(IFEVAL_GT), "dataset": "ifeval"},
    {
        "prompt": "q4",
        "response": "So it is 72",
        "ground_truth": "72",
        "dataset": "gsm8k",
        "finish_reason": "length",
    },
]


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_good_file(tmp_path, capsys):
    source = _write(tmp_path / "gens.jsonl", GOOD_ROWS)
    out = tmp_path / "out" / "scored.jsonl"
    assert main(["--input", str(source), "--output", str(out), "--workers", "2"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in scored] == ["q1", "q2", "q3", "q4"]  # order and fields kept
    assert [row["reward"] for row in scored] == [10.0, 10.0, 10.0, -10.0]
    assert scored[1]["verification"]["matched"]["source"] == "boxed"
    assert scored[2]["verification"]["instructions"] == [{"id": "punctuation:no_comma", "followed": True}]
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "math" in printed and "ifeval" in printed and "accuracy" in printed
    assert [
        name for name in (tmp_path / "out").iterdir() if name.name != "scored.jsonl"
    ] == []  # no temp left


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "invalid JSON"),
        (
            {"prompt": "q", "response": 5, "ground_truth": "1", "dataset": "gsm8k"},
            "'response' must be a string",
        ),
        ({"prompt": "q", "response": "r", "dataset": "gsm8k"}, "missing field 'ground_truth'"),
        (
            {"prompt": "q", "response": "r", "ground_truth": "1", "dataset": "mbpp"},
            "no verifier registered for dataset 'mbpp'",
        ),
        ({"prompt": "q", "response": "r", "ground_truth": "{}", "dataset": "ifeval"}, "instruction_id_list"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_line_is_an_error_naming_file_and_line(tmp_path, capsys, bad_line, message):
    source = _write(tmp_path / "gens.jsonl", [GOOD_ROWS[0], GOOD_ROWS[1], bad_line, GOOD_ROWS[2]])
    out = tmp_path / "scored.jsonl"
    assert main(["--input", str(source), "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{source}:3:" in error and message in error
    assert not out.exists()


def test_skip_bad_counts_and_lists_skipped_lines(tmp_path, capsys):
    lines = [GOOD_ROWS[0], "oops", GOOD_ROWS[1], {"prompt": "q"}, "", GOOD_ROWS[2]]
    source = _write(tmp_path / "gens.jsonl", lines)
    out = tmp_path / "scored.jsonl"
    assert main(["--input", str(source), "--output", str(out), "--skip-bad", "--workers", "1"]) == 0
    assert len(out.read_text().splitlines()) == 3
    captured = capsys.readouterr()
    assert "skipped 2 malformed row(s) at line(s): 2, 4" in captured.err
    assert "skipped 2" in captured.out


def test_reward_options(tmp_path):
    gt = {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]}
    rows = [
        {"prompt": "q", "response": "a, b", "ground_truth": gt, "dataset": "ifeval"},
        {"prompt": "q", "response": "7", "ground_truth": "7", "dataset": "gsm8k", "finish_reason": "length"},
    ]
    source = _write(tmp_path / "gens.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    argv = ["--input", str(source), "--output", str(out), "--alpha", "1", "--no-eos-penalty", "-2"]
    assert main(argv + ["--ifeval-reward", "all"]) == 0
    assert [json.loads(line)["reward"] for line in out.read_text().splitlines()] == [0.0, -2.0]
    rows[0]["response"] = '"a b"'
    _write(source, rows)
    assert main(argv + ["--ifeval-mode", "loose"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["reward"] == 1.0


def test_existing_output_is_untouched_when_input_is_bad(tmp_path):
    source = _write(tmp_path / "gens.jsonl", ["{bad"])
    out = tmp_path / "scored.jsonl"
    out.write_text("previous results\n")
    assert main(["--input", str(source), "--output", str(out)]) == 2
    assert out.read_text() == "previous results\n"
