"""Tülu 3 SFT and DPO as thin Hydra entries: ``examples/sft.py`` and ``examples/dpo.py`` run
``@hydra.main`` over ``hydra_conf/<stage>.yaml`` (the same config tree and overrides as ``megatron-tulu
<stage>``), the stage's trainer (:func:`megatron_tulu.algorithms.sft.train_sft`,
:func:`megatron_tulu.algorithms.dpo.train_dpo`) and print its summary as JSON on rank 0, e.g.::

    python examples/sft.py                                   # embedded default, CPU
    torchrun --nproc-per-node 8 examples/sft.py preset=sft_tulu3_8b model=llama3.1_8b \
        parallel=8b_node model.hf_path=/ckpt/llama-3.1-8b
    torchrun --nproc-per-node 8 examples/dpo.py preset=dpo_tulu3_8b model=llama3.1_8b \
        parallel=8b_node model.hf_path=/ckpt/llama-3.1-8b
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from megatron_tulu.config.load import to_dataclass
from megatron_tulu.config.schema import DPORunConfig, SFTRunConfig

CONF = Path(__file__).resolve().parents[1] / "hydra_conf"
# stage -> (trainer "module:function", config schema)
TRAINERS = {
    "sft": ("megatron_tulu.algorithms.sft:train_sft", SFTRunConfig),
    "dpo": ("megatron_tulu.algorithms.dpo:train_dpo", DPORunConfig),
}


def run(stage: str) -> None:
    """Train ``stage`` with the command line's Hydra overrides (``sys.argv``)."""
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # a CPU venv on a GPU node: one error line, before Hydra starts
    target, schema = TRAINERS[stage]

    @hydra.main(config_path=str(CONF), config_name=stage, version_base=None)
    def main(cfg: DictConfig) -> None:
        from megatron_tulu.algorithms.loop import is_rank0

        module, name = target.split(":")
        summary = getattr(importlib.import_module(module), name)(to_dataclass(cfg, schema))
        if is_rank0():
            print(json.dumps(summary, indent=2, default=str))

    # Hydra names the job (its log file, `hydra.job.name`) after the module of `main`: this one
    if not any(a.startswith("hydra.job.name=") for a in sys.argv[1:]):
        sys.argv.append(f"hydra.job.name={stage}")
    main()
