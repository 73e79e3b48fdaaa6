"""README's demo table follows the recorded demo result, and the check that guards it can fail."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_check_demo():
    spec = importlib.util.spec_from_file_location("check_demo", ROOT / "scripts" / "check_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_demo = load_check_demo()


def test_readme_table_is_the_recorded_demo_result():
    assert check_demo.check(None) == []


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """README and the record copied into tmp_path, so the check can be pointed at edited copies."""
    for name, source in (("README", check_demo.README), ("RECORD", check_demo.RECORD)):
        copy_path = tmp_path / source.name
        copy_path.write_text(source.read_text())
        monkeypatch.setattr(check_demo, name, copy_path)
    monkeypatch.setattr(check_demo, "ROOT", tmp_path)
    return tmp_path


def write_run(path: Path, summary: dict) -> Path:
    run = copy.deepcopy(summary)
    for row in run["stages"].values():
        row["minutes"] = 12.345  # wall clock: never compared
    path.write_text(json.dumps(run))
    return path


def test_a_run_equal_to_the_record_passes_whatever_its_minutes(sandbox):
    record = json.loads(check_demo.RECORD.read_text())
    assert check_demo.check(write_run(sandbox / "run.json", record)) == []


def test_one_digit_of_drift_fails_with_a_diff(sandbox):
    record = json.loads(check_demo.RECORD.read_text())
    drifted = copy.deepcopy(record)
    drifted["stages"]["rlvr"]["reward/all"] += 0.001
    problems = check_demo.check(write_run(sandbox / "run.json", drifted))
    assert any(line.startswith("+reward/all") for line in problems)
    assert check_demo.main([str(sandbox / "run.json")]) == 1


def test_paired_counts_are_compared(sandbox):
    drifted = json.loads(check_demo.RECORD.read_text())
    drifted["paired"]["rlvr_vs_dpo"]["fixed"] += 1
    assert check_demo.check(write_run(sandbox / "run.json", drifted))


def test_a_readme_edited_by_hand_fails(sandbox):
    readme = check_demo.README
    readme.write_text(readme.read_text().replace("reward/all ", "reward/all  ", 1))
    assert check_demo.check(None)


def test_record_rewrites_readme_and_the_record(sandbox):
    drifted = json.loads(check_demo.RECORD.read_text())
    drifted["stages"]["sft"]["accuracy/all"] = 0.5
    run = write_run(sandbox / "run.json", drifted)
    assert check_demo.main(["--record", str(run)]) == 0
    assert "minutes" not in json.loads(check_demo.RECORD.read_text())["stages"]["sft"]
    assert "0.500" in check_demo.README.read_text()
    assert check_demo.check(run) == []


def test_bad_inputs_are_one_error_line(sandbox, capsys):
    assert check_demo.main([str(sandbox / "missing.json")]) == 2
    (sandbox / "bad.json").write_text("{}")
    assert check_demo.main([str(sandbox / "bad.json")]) == 2
    check_demo.README.write_text("no markers here\n")
    assert check_demo.main([]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
