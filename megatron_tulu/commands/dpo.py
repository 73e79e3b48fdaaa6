"""`megatron-tulu dpo [hydra overrides]`: preference optimisation (megatron_tulu.algorithms.dpo)."""

from megatron_tulu.commands._trainer import run_as_script, trainer_command

USAGE = "megatron-tulu dpo [hydra overrides] (run under torchrun for several ranks)\n\nExample: megatron-tulu dpo preset=dpo_tulu3_8b model.hf_path=/ckpt/tulu3-sft"
main = trainer_command("dpo", "megatron_tulu.algorithms.dpo:train_dpo", USAGE)

if __name__ == "__main__":
    run_as_script(main)
