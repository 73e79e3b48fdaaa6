"""Tülu 3 DPO: a thin Hydra entry over :func:`megatron_tulu.algorithms.dpo.train_dpo`.

Same config tree and overrides as ``megatron-tulu dpo`` (``hydra_conf/dpo.yaml``), e.g.::

    python examples/dpo.py                                   # embedded default, CPU
    torchrun --nproc-per-node 8 examples/dpo.py preset=dpo_tulu3_8b model=llama3.1_8b \\
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
from megatron_tulu.config.schema import DPORunConfig


@hydra.main(config_path="../hydra_conf", config_name="dpo", version_base=None)
def main(cfg: DictConfig) -> None:
    from megatron_tulu.algorithms.dpo import train_dpo
    from megatron_tulu.algorithms.loop import is_rank0

    summary = train_dpo(to_dataclass(cfg, DPORunConfig))
    if is_rank0():
        print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # a CPU venv on a GPU node: one error line, before Hydra starts
    main()
