"""Does the demo still print what README shows? Run before landing a change that can move numbers.

    python scripts/check_demo.py                          # README's table == the recorded summary
    python scripts/check_demo.py outputs/demo/summary.json  # ... and a run prints that table, digit for digit
    python scripts/check_demo.py --record outputs/demo/summary.json  # a numerics change, on purpose:
                                                          # record this run and rewrite README's table

The recorded summary (``docs/demo_summary.json``) holds what a seed determines: held-out metrics per
stage and the paired comparisons (no wall-clock minutes). Exit 1 with a diff when anything differs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from megatron_tulu.algorithms.pipeline import format_results

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "demo_summary.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- demo-table:begin -->", "<!-- demo-table:end -->"


class CheckError(Exception):
    """A missing or malformed input: one ``error:`` line, exit 2."""


def read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
        missing = {"stages", "paired"} - set(summary)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
    except FileNotFoundError as exc:
        raise CheckError(f"{path}: no such file (run `make demo` first?)") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckError(f"{path}: not a pipeline summary.json ({exc})") from exc
    return summary


def recorded(summary: dict[str, Any]) -> dict[str, Any]:
    """What a seed determines: the summary without wall-clock minutes."""
    stages = {
        name: {k: v for k, v in row.items() if k != "minutes"} for name, row in summary["stages"].items()
    }
    return {
        "stages": stages,
        "paired": summary["paired"],
        "cpu_isa": summary.get("cpu_isa"),
        "packages": summary.get("packages"),
    }


def readme_block(text: str) -> tuple[int, int]:
    """Line span of the fenced table between README's demo-table markers (the fences excluded)."""
    lines = text.splitlines()
    try:
        begin, end = lines.index(BEGIN), lines.index(END)
    except ValueError as exc:
        raise CheckError(f"{README}: the {BEGIN} / {END} markers are missing") from exc
    if not (end - begin >= 3 and lines[begin + 1].startswith("```") and lines[end - 1] == "```"):
        raise CheckError(f"{README}: a ``` fenced block must stand between the demo-table markers")
    return begin + 2, end - 1


def diff(expected: str, actual: str, expected_name: str, actual_name: str) -> list[str]:
    return list(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), expected_name, actual_name, lineterm=""
        )
    )


def check(run: Path | None) -> list[str]:
    """Differences (as diff lines) between README, the record and an optional run; empty when none."""
    table = format_results(read_summary(RECORD))
    text = README.read_text()
    start, stop = readme_block(text)
    problems = diff(table, "\n".join(text.splitlines()[start:stop]), str(RECORD), f"{README} (demo table)")
    if run is not None:
        summary = read_summary(run)
        run_problems = diff(table, format_results(summary), str(RECORD), str(run))
        record = read_summary(RECORD)
        for key in ("cpu_isa", "packages"):
            if run_problems and record.get(key) != summary.get(key):
                run_problems.append(
                    f"note: {key} differs (recorded {record.get(key)}, this run {summary.get(key)}): "
                    "the demo is bit-reproducible in one environment only"
                )
        problems += run_problems
    return problems


def record(run: Path) -> None:
    summary = recorded(read_summary(run))
    RECORD.write_text(json.dumps(summary, indent=2) + "\n")
    lines = README.read_text().splitlines()
    start, stop = readme_block("\n".join(lines))
    lines[start:stop] = format_results(summary).splitlines()
    README.write_text("\n".join(lines) + "\n")
    print(f"recorded {run} in {RECORD.relative_to(ROOT)} and README's demo table")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("summary", nargs="?", type=Path, help="a run's summary.json to compare")
    parser.add_argument("--record", type=Path, metavar="SUMMARY", help="record this run as the demo's result")
    args = parser.parse_args(argv)
    try:
        if args.record is not None:
            record(args.record)
        problems = check(args.summary)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problems:
        print("\n".join(problems))
        print("demo check: DIFFERS from the recorded result (see the diff above)", file=sys.stderr)
        return 1
    against = f"{args.summary} and README" if args.summary else "README"
    print(f"demo check: {against} match the recorded result ({RECORD.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
