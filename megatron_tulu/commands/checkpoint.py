"""`megatron-tulu checkpoint verify DIR...`: check checkpoints offline against their checksums.

Reads the on-disk format only (``engine/checkpoint_format.py``): no model is built and no
process group is started, so it runs anywhere the files are, e.g. before a resume on a new node.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_tulu.engine.checkpoint_format import CHECKSUMS, META, checkpoint_problems, complete_dirs


def verify_main(argv: list[str]) -> int:
    """`megatron-tulu checkpoint verify DIR...`: check every file of a checkpoint (or of every
    checkpoint under a root) against the checksums written at save. Exit 0 when intact, 2 otherwise."""
    parser = argparse.ArgumentParser(prog="megatron-tulu checkpoint verify", description=verify_main.__doc__)
    parser.add_argument("dirs", nargs="+", help="a step_N directory or a checkpoint root")
    args = parser.parse_args(argv)
    bad = 0
    for d in map(Path, args.dirs):
        targets = [d] if (d / META).is_file() else complete_dirs(d)
        if not targets:
            print(f"error: {d}: no complete megatron-tulu checkpoint here", file=sys.stderr)
            bad += 1
            continue
        for ckpt in targets:
            problems = checkpoint_problems(ckpt, collective=False)
            has_sums = (ckpt / CHECKSUMS).is_file()
            if problems:
                bad += 1
                for line in problems:
                    print(f"error: {line}", file=sys.stderr)
            else:
                n = len(json.loads((ckpt / CHECKSUMS).read_text())) if has_sums else 0
                print(
                    f"ok: {ckpt} ({n} files)" if has_sums else f"unchecked: {ckpt} (saved without checksums)"
                )
    return 2 if bad else 0


def main(argv: list[str]) -> int:
    """`megatron-tulu checkpoint verify DIR`."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: megatron-tulu checkpoint verify DIR [DIR...]\n\n" + (verify_main.__doc__ or ""))
        return 0
    if argv[0] != "verify":
        print(
            f"error: unknown checkpoint subcommand {argv[0]!r}; use: megatron-tulu checkpoint verify DIR",
            file=sys.stderr,
        )
        return 2
    return verify_main(argv[1:])
