"""`megatron-tulu sft [hydra overrides]`: supervised fine-tuning (megatron_tulu.algorithms.sft)."""

from megatron_tulu.commands._trainer import run_as_script, trainer_command

USAGE = "megatron-tulu sft [hydra overrides] (run under torchrun for several ranks)\n\nExample: megatron-tulu sft preset=sft_tulu3_8b model=llama3.1_8b model.hf_path=/ckpt/llama"
main = trainer_command("sft", "megatron_tulu.algorithms.sft:train_sft", USAGE)

if __name__ == "__main__":
    run_as_script(main)
