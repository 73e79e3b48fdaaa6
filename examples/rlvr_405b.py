"""Production RLVR entry: Llama-3.1-405B policy + 8B value model, Megatron learners + vLLM engines.

Launched by ``torchrun`` under Slurm (see ``examples/slurm/rlvr.sbatch``); every rank runs
this file and :mod:`megatron_tulu.algorithms.roles` decides what it does. Arguments are Hydra
overrides of ``hydra_conf/rlvr.yaml`` (``preset=rlvr_tulu3_405b`` unless a preset is given)::

    torchrun ... examples/rlvr_405b.py model.hf_path=/ckpt/tulu3-405b-dpo rlvr.value_model=/ckpt/rm-8b

``--dry-run`` needs no GPU and no process group (:mod:`megatron_tulu.algorithms.dry_run`): it makes
the checks ``RLTrainer.setup`` makes, prints each rank's role, the per-GPU memory plan, the
weight-refit plan and the run's hours and Slurm requeues, and exits non-zero on a plan that cannot
run::

    python examples/rlvr_405b.py --dry-run --nodes 32 --gpus-per-node 8
    python examples/rlvr_405b.py --dry-run --nodes 32 --step-seconds 2100 --time-limit 48:00:00
    python examples/rlvr_405b.py --dry-run --nodes 32 parallel.pp=6 rollout.num_engines=1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    from megatron_tulu.algorithms.dry_run import dry_run, split_argv
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    args, overrides = split_argv(argv)
    if args.dry_run:
        from megatron_tulu.errors import silence_import_noise

        exit_on_cpu_stack()  # the batch host is a GPU node: a CPU venv there is refused in seconds
        silence_import_noise()  # the "Apex / Transformer Engine not installed" lines, as the CLI does
        return dry_run(args, overrides)
    # the real run is `megatron-tulu rlvr`: same process set-up (SIGTERM unwinds, ranks die with
    # their launcher, one `error:` line for user errors, a CPU venv on GPUs refused) and the same
    # trainer, roles included
    from megatron_tulu.cli import main as cli_main

    return cli_main(["rlvr", *overrides])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
