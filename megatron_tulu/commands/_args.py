"""Argument helpers shared by the commands: argparse flags plus trailing Hydra overrides."""

from __future__ import annotations

import argparse

from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import RunConfig


def parse_flags_and_overrides(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace, list[str]]:
    """Flags go to argparse; ``key=value`` tokens are Hydra overrides (e.g. ``parallel.tp=2``)."""
    parser.epilog = (
        parser.epilog or ""
    ) + "Trailing key=value arguments are Hydra overrides (parallel.tp=2)."
    args, rest = parser.parse_known_args(argv)
    bad = [o for o in rest if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; Hydra overrides look like key=value")
    return args, rest


def run_config(overrides: list[str]) -> RunConfig:
    return load_config(overrides)
