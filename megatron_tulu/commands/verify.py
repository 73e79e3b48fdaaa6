"""`megatron-tulu verify`: score a JSONL of generations with the verifiable rewards.

Input rows: `{"prompt": str, "response": str, "ground_truth": ..., "dataset": str,
"finish_reason": str | null (optional)}`. Output: the same rows, in order, plus `reward`, `score`,
`stopped_at_eos` and `verification` (the verifier's details). Prints accuracy per dataset.
Reading, validating and writing: :mod:`megatron_tulu.rewards.generations`.

Rows are held in memory (generation files are small next to RAM). Every row is validated before
any scoring starts, so a malformed file fails fast with its file and
line number (or, with --skip-bad, the bad rows are counted, listed and left out). The output is
written to a temporary file next to the destination and renamed into place, so an interrupted run
never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from megatron_tulu.rewards.assembly import (
    DEFAULT_ALPHA,
    DEFAULT_NO_EOS_PENALTY,
    DEFAULT_TIME_LIMIT_S,
    compute_rewards,
)
from megatron_tulu.rewards.generations import MalformedRowError, load_rows, summarize, write_jsonl_atomically
from megatron_tulu.rewards.gsm8k import RULES as GSM8K_RULES


def format_table(table: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'dataset':<10} {'n':>7} {'accuracy':>9} {'all-pass':>9} {'no-eos':>7} {'errors':>7} {'reward':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in table:
        lines.append(
            f"{row['dataset']:<10} {row['n']:>7} {row['accuracy']:>9.4f} {row['fully_correct']:>9.4f} "
            f"{row['no_eos']:>7} {row['errors']:>7} {row['mean_reward']:>8.3f}"
        )
    return "\n".join(lines)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="megatron-tulu verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="JSONL of generations")
    parser.add_argument("--output", required=True, help="scored JSONL to write")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and report) malformed rows")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="reward for a correct answer")
    parser.add_argument("--no-eos-penalty", type=float, default=DEFAULT_NO_EOS_PENALTY)
    parser.add_argument("--ifeval-mode", choices=("strict", "loose"), default="strict")
    parser.add_argument("--ifeval-reward", choices=("fraction", "all"), default="fraction")
    parser.add_argument(
        "--gsm8k-rule",
        choices=GSM8K_RULES,
        default="numeric",
        help="numeric (default) | open-instruct (its exact string comparison) | tulu3 (as released)",
    )
    parser.add_argument(
        "--strip-thinking",
        action="store_true",
        help="verify only the answer: text after the last </think>, inside the last <answer></answer>",
    )
    parser.add_argument(
        "--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, help="hard limit per item, seconds"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    try:
        loaded = load_rows(args.input, args.skip_bad)
    except MalformedRowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    if loaded.skipped:
        lines = ", ".join(str(number) for number, _ in loaded.skipped)
        print(f"skipped {len(loaded.skipped)} malformed row(s) at line(s): {lines}", file=sys.stderr)
        for number, reason in loaded.skipped:
            print(f"  {args.input}:{number}: {reason}", file=sys.stderr)
        if not loaded.rows:
            print(
                f"error: {args.input}: all {len(loaded.skipped)} row(s) are malformed and were skipped "
                "(listed above); nothing to score",
                file=sys.stderr,
            )
            return 2

    from tqdm import tqdm

    progress = tqdm(total=len(loaded.rows), desc="verify", unit="row", disable=None)
    progress_lock = threading.Lock()

    def on_done(_: int) -> None:
        with progress_lock:
            progress.update(1)

    try:
        results = compute_rewards(
            loaded.rows,
            alpha=args.alpha,
            no_eos_penalty=args.no_eos_penalty,
            workers=args.workers,
            time_limit=args.time_limit if args.time_limit > 0 else None,
            verifier_options={
                "ifeval": {"mode": args.ifeval_mode, "reward": args.ifeval_reward},
                "gsm8k": {"rule": args.gsm8k_rule},
            },
            on_done=on_done,
            strip_thinking=args.strip_thinking,
        )
    finally:
        progress.close()

    scored = [
        {
            **row,
            "reward": result.reward,
            "score": result.score,
            "stopped_at_eos": result.stopped_at_eos,
            "verification": result.details,
        }
        for row, result in zip(loaded.rows, results)
    ]
    write_jsonl_atomically(args.output, scored)
    if results:
        print(format_table(summarize(results)))
    print(
        f"wrote {len(scored)} scored row(s) to {args.output}"
        + (f"; skipped {len(loaded.skipped)}" if loaded.skipped else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
