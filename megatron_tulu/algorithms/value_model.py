"""The PPO value model: a Megatron GPTModel whose vocab-parallel output layer is a scalar head.

The head is a plain ``Linear(hidden, 1)`` replicated on every TP rank: its input (the final-norm
hidden states) is replicated, so every TP rank computes the same value and the same head gradient,
and Megatron's grad-norm treats the head as a TP duplicate. Initialised from a reward model's
``score.weight`` when one is given (Tülu 3's choice), else from the policy with a fresh head.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel

from megatron_tulu.config.schema import ModelConfig, ParallelConfig, PrecisionConfig, RLVRRunConfig
from megatron_tulu.config.validate import validate_layout
from megatron_tulu.engine.model import build_model, unwrap
from megatron_tulu.engine.optimizer import uses_distributed_optimizer
from megatron_tulu.models.hf_io import SafetensorsReader, load_hf_weights, model_config_from_hf


class ScalarHead(torch.nn.Module):
    """Drop-in for GPTModel.output_layer: ``(hidden [s,b,h]) -> (values [s,b,1], None)``."""

    def __init__(self, hidden: int, std: float, seed: int):
        super().__init__()
        # Own generator: the same head on every TP rank and in every layout.
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(1, hidden, generator=gen) * std)

    def forward(self, hidden_states: torch.Tensor, weight=None, runtime_gather_output=None):
        return torch.nn.functional.linear(hidden_states, self.weight.to(hidden_states.dtype)), None


def build_value_model(
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    *,
    backbone_hf: str | os.PathLike,
    reward_model_hf: str | os.PathLike | None = None,
    seed: int = 0,
) -> list[torch.nn.Module]:
    """Value model chunks (DDP-wrapped) on this rank's pipeline stage(s)."""
    chunks = build_model(model_cfg, parallel, precision, wrap_ddp=False)
    source = reward_model_hf or backbone_hf
    load_hf_weights(chunks, model_cfg, source, skip=frozenset({"output_layer.weight"}))
    for chunk in chunks:
        gpt: GPTModel = unwrap(chunk)
        if not gpt.post_process:
            continue
        # Tülu 3 RM head init: N(0, 1/sqrt(d_model + 1))
        head = ScalarHead(model_cfg.hidden_size, std=1.0 / (model_cfg.hidden_size + 1) ** 0.5, seed=seed)
        if reward_model_hf is not None:
            head.weight.data.copy_(
                SafetensorsReader(reward_model_hf).get("score.weight", (1, model_cfg.hidden_size))
            )
        device = next(gpt.parameters()).device
        gpt.output_layer = head.to(device=device, dtype=next(gpt.decoder.parameters()).dtype)
    tcfg = unwrap(chunks[0]).config
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=uses_distributed_optimizer(parallel),
    )
    return [
        DistributedDataParallel(config=tcfg, ddp_config=ddp_cfg, module=c, disable_bucketing=i > 0)
        for i, c in enumerate(chunks)
    ]


def value_model_config(cfg: RLVRRunConfig) -> ModelConfig:
    """The value model's own architecture: the reward model's of ``rlvr.value_model`` (Tülu 3 405B:
    an 8B reward model), else the policy's."""
    rl = cfg.rlvr
    return (
        dataclasses.replace(model_config_from_hf(rl.value_model), name="value")
        if rl.value_model
        else cfg.model
    )


def build_critic_model(cfg: RLVRRunConfig, world_size: int, hf_source: str) -> list[torch.nn.Module]:
    """The RL run's value model (:func:`value_model_config`) in the learners' layout: a layer count
    PP does not divide gets Megatron's uneven first/last stages."""
    vmodel = value_model_config(cfg)
    validate_layout(vmodel, cfg.parallel, world_size, uneven_stages=True)
    return build_value_model(
        vmodel,
        cfg.parallel,
        cfg.precision,
        backbone_hf=hf_source,
        reward_model_hf=cfg.rlvr.value_model,
        seed=cfg.train.seed,
    )
