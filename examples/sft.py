"""Tülu 3 SFT: a thin Hydra entry over :func:`megatron_tulu.algorithms.sft.train_sft`.

Same config tree and overrides as ``megatron-tulu sft`` (``hydra_conf/sft.yaml``), e.g.::

    python examples/sft.py                                   # embedded default, CPU
    torchrun --nproc-per-node 8 examples/sft.py preset=sft_tulu3_8b model=llama3.1_8b \\
        parallel=8b_node model.hf_path=/ckpt/llama-3.1-8b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from megatron_tulu.config.load import to_dataclass
from megatron_tulu.config.schema import SFTRunConfig


@hydra.main(config_path="../hydra_conf", config_name="sft", version_base=None)
def main(cfg: DictConfig) -> None:
    from megatron_tulu.algorithms.loop import is_rank0
    from megatron_tulu.algorithms.sft import train_sft

    summary = train_sft(to_dataclass(cfg, SFTRunConfig))
    if is_rank0():
        print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # a CPU venv on a GPU node: one error line, before Hydra starts
    main()
