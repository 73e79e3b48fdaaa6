"""What the three trainer commands (sft, dpo, rlvr) share: help, config, the run, the summary."""

from __future__ import annotations

import importlib
import json
from typing import Any

from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import DPORunConfig, RLVRRunConfig, SFTRunConfig

RUN_CONFIGS = {"sft": SFTRunConfig, "dpo": DPORunConfig, "rlvr": RLVRRunConfig}


def trainer_command(config_name: str, train: str, usage: str, *, rank0_prints: bool = True):
    """The ``main(argv)`` of a trainer command (see `run_trainer_command`)."""

    def main(argv: list[str]) -> int:
        return run_trainer_command(argv, config_name, train, usage, rank0_prints=rank0_prints)

    return main


def run_as_script(main) -> None:
    """``python -m megatron_tulu.commands.<name>``: what `megatron-tulu <name>` does, without the
    dispatcher (no CPU venv on a GPU node either)."""
    import sys

    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()
    sys.exit(main(sys.argv[1:]))


def run_trainer_command(
    argv: list[str], config_name: str, train: str, usage: str, *, rank0_prints: bool = True
) -> int:
    """`megatron-tulu <config_name> [hydra overrides]`: load and validate the config, then run
    ``train`` ("module:function", imported only now: it loads torch and megatron-core, so --help,
    config errors and the CPU-stack check stay cheap) and print its summary as JSON.

    ``rank0_prints``: the summary is printed on global rank 0 (SFT, DPO); otherwise on the rank the
    trainer returns it on (RL returns it on learner rank 0 only, wherever roles put it).
    """
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return 0
    cfg = load_config(argv, config_name=config_name, schema=RUN_CONFIGS[config_name])
    module_name, func_name = train.split(":")
    summary: dict[str, Any] | None = getattr(importlib.import_module(module_name), func_name)(cfg)
    if rank0_prints:
        from megatron_tulu.algorithms.loop import is_rank0

        if not is_rank0():
            return 0
    if summary:
        print(json.dumps(summary, indent=2, default=str))
    return 0
