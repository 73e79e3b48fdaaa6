"""`megatron-tulu rlvr [hydra overrides]`: RL with verifiable rewards (megatron_tulu.algorithms.rlvr)."""

from megatron_tulu.commands._trainer import run_as_script, trainer_command

USAGE = "megatron-tulu rlvr [hydra overrides] (run under torchrun for several learner ranks)\n\nExample: megatron-tulu rlvr preset=rlvr_tiny_2node (see examples/slurm/rlvr.sbatch)"
main = trainer_command("rlvr", "megatron_tulu.algorithms.rlvr:train_rlvr", USAGE, rank0_prints=False)

if __name__ == "__main__":
    run_as_script(main)
