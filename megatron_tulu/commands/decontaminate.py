"""`megatron-tulu decontaminate`: remove training prompts that overlap evaluation prompts
(:mod:`megatron_tulu.data.decontaminate`).

Tülu 3 §3.2: 8-gram matching on prompts only. A training instance is removed when it covers more
than 50% of the tokens of some eval instance (see `ngram_overlap`). A training dataset is flagged
as contaminated when its instances overlap more than 2% of the instances of any eval set; the
paper then dropped such datasets entirely or kept only the clean instances, a decision left to the
user (the flag is reported, and the cleaned copy is always written).

Inputs are JSONL files, HF datasets saved with `save_to_disk` (a directory), or parquet: one file
or a folder in the hub layout (`data/train-*.parquet`; kept rows are then written as JSONL). The prompt of a row
is, by default, the concatenated user turns of `messages`, else `prompt` (a string, or a
messages list), else `question`/`problem`/`instruction` (common eval-set fields); `--field`
overrides that order. Outputs in `--out`:
  <name>.jsonl (or <name>/ for an HF dataset)  the training rows that were kept
  <name>.removed_ids.txt                       ids of removed rows (`id` field, else file:line)
  report.json                                  all numbers printed in the table, plus each
                                               removed row's matching eval instances
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from megatron_tulu.data.decontaminate import (
    DEFAULT_FIELDS,
    InputError,
    build_eval_index,
    contamination_table,
    decontaminate_file,
    unique_names,
)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="megatron-tulu decontaminate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", required=True, help="training JSONL files / HF dataset dirs")
    parser.add_argument("--eval", nargs="+", required=True, help="evaluation JSONL files / HF dataset dirs")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--ngram", type=int, default=8)
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="instance overlap: > this token fraction"
    )
    parser.add_argument(
        "--dataset-threshold",
        type=float,
        default=0.02,
        help="flag a training set overlapping > this eval fraction",
    )
    parser.add_argument(
        "--field",
        action="append",
        default=None,
        help=f"prompt field(s), tried in order (default: {DEFAULT_FIELDS})",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    fields = tuple(args.field) if args.field else DEFAULT_FIELDS
    os.makedirs(args.out, exist_ok=True)
    try:
        index, eval_sizes = build_eval_index(args.eval, fields, args.ngram)
        reports = [
            decontaminate_file(path, name, index, fields, args.threshold, args.out)
            for name, path in zip(unique_names(args.train), args.train)
        ]
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    table = contamination_table(reports, eval_sizes, args.dataset_threshold)
    header = f"{'train':<24} {'eval':<20} {'overlap':>12} {'%':>7} {'train rows hit':>15}  flag"
    print(header)
    print("-" * len(header))
    for row in table:
        overlap = f"{row['eval_instances_overlapped']}/{row['eval_instances']}"
        flag = "CONTAMINATED" if row["contaminated"] else ""
        print(
            f"{row['train']:<24} {row['eval']:<20} {overlap:>12} {100 * row['fraction']:>6.2f}% "
            f"{row['train_rows_matched']:>8}/{row['train_rows']:<6}  {flag}"
        )
    if index.too_short:
        print(f"note: {index.too_short} eval instance(s) shorter than {args.ngram} tokens cannot be matched")
    flagged = sorted({row["train"] for row in table if row["contaminated"]})
    print(
        f"contaminated training sets (> {100 * args.dataset_threshold:g}% of an eval set): {flagged or 'none'}"
    )
    report = {
        "ngram": args.ngram,
        "threshold": args.threshold,
        "dataset_threshold": args.dataset_threshold,
        "tokenization": "lowercase, \\w+ runs",
        "eval_sets": eval_sizes,
        "eval_instances_too_short": index.too_short,
        "table": table,
        "contaminated_training_sets": flagged,
        "removed": {r.name: r.removed_rows for r in reports},
    }
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
