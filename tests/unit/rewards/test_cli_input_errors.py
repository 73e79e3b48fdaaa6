"""`verify` / `decontaminate` on damaged input: one `error:` line naming file and line (issue 14)."""

from __future__ import annotations

import json

from megatron_tulu.commands.decontaminate import main as decontaminate_main
from megatron_tulu.commands.verify import main as verify_main

GOOD = {"prompt": "q", "response": "It is 4", "ground_truth": "4", "dataset": "gsm8k"}


def _write(path, lines: list[bytes]):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _good() -> bytes:
    return json.dumps(GOOD).encode()


def test_verify_non_utf8_line_is_an_error_naming_file_and_line(tmp_path, capsys):
    source = _write(tmp_path / "gens.jsonl", [_good(), b'{"prompt": "\xff\xfe"}', _good()])
    assert verify_main(["--input", str(source), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"error: {source}:2: invalid UTF-8 at byte 12 of the line" in err  # 0-based, as data.io
    assert "Traceback" not in err and not (tmp_path / "o.jsonl").exists()


def test_verify_skip_bad_counts_the_non_utf8_line(tmp_path, capsys):
    source = _write(tmp_path / "gens.jsonl", [_good(), b"\xc3\x28 broken", _good()])
    out = tmp_path / "o.jsonl"
    assert verify_main(["--input", str(source), "--output", str(out), "--skip-bad", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 malformed row(s) at line(s): 2" in captured.err
    assert f"{source}:2: invalid UTF-8" in captured.err
    assert len(out.read_text().splitlines()) == 2 and "skipped 1" in captured.out


def test_verify_all_rows_bad_with_skip_bad_is_an_error_that_reports_the_skips(tmp_path, capsys):
    source = _write(tmp_path / "gens.jsonl", [b"{not json", b"\xff", b"[1, 2]"])
    out = tmp_path / "o.jsonl"
    assert verify_main(["--input", str(source), "--output", str(out), "--skip-bad"]) == 2
    err = capsys.readouterr().err
    assert "skipped 3 malformed row(s) at line(s): 1, 2, 3" in err
    assert f"error: {source}: all 3 row(s) are malformed and were skipped" in err
    assert not out.exists()


def test_verify_truncated_line_names_its_last_column(tmp_path, capsys):
    truncated = _good()[:-4]  # cut inside the last value: '..."dataset": "gsm'
    source = _write(tmp_path / "gens.jsonl", [_good(), truncated])
    assert verify_main(["--input", str(source), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    # The unterminated string starts at the opening quote of "gsm; json's column is 1-based.
    column = truncated.rindex(b'"') + 1
    assert f"error: {source}:2: invalid JSON: Unterminated string starting at at column {column}" in err
    missing_brace = _good()[:-1]
    _write(source, [missing_brace])
    assert verify_main(["--input", str(source), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{source}:1: invalid JSON: Expecting ',' delimiter at column {len(missing_brace) + 1}" in err


def _eval_and_train(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "the quick brown fox jumps over the lazy dog again"}) + "\n")
    return train


def test_decontaminate_non_utf8_is_an_error_naming_file_and_line(tmp_path, capsys):
    train = _eval_and_train(tmp_path)
    bad_eval = _write(
        tmp_path / "eval.jsonl", [json.dumps({"prompt": "fine"}).encode(), b'{"prompt": "\xff"}']
    )
    code = decontaminate_main(["--train", str(train), "--eval", str(bad_eval), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: {bad_eval}:2: invalid UTF-8 at byte 12 of the line" in err and "Traceback" not in err
    bad_train = _write(tmp_path / "bad_train.jsonl", [b"\xfe"])
    good_eval = tmp_path / "good_eval.jsonl"
    good_eval.write_text(json.dumps({"prompt": "fine"}) + "\n")
    code = decontaminate_main(
        ["--train", str(bad_train), "--eval", str(good_eval), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and f"error: {bad_train}:1: invalid UTF-8" in capsys.readouterr().err


def test_decontaminate_empty_eval_file_is_an_error(tmp_path, capsys):
    train = _eval_and_train(tmp_path)
    empty = tmp_path / "eval.jsonl"
    empty.write_text("\n\n")
    code = decontaminate_main(["--train", str(train), "--eval", str(empty), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"error: {empty}: evaluation set has no rows" in capsys.readouterr().err
    assert not (tmp_path / "o" / "report.json").exists()
