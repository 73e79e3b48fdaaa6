"""Values of a value model built from an HF model whose layer count the pipeline does not divide
(Megatron-Core's uneven first/last stages), for comparison with the unsplit model."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from megatron_tulu.algorithms.value_model import build_value_model
from megatron_tulu.config.schema import ParallelConfig, PrecisionConfig
from megatron_tulu.config.validate import pipeline_stage_layers, validate_layout
from megatron_tulu.engine.model import unwrap
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from megatron_tulu.engine.train_step import forward_only_collect
from megatron_tulu.models.hf_io import model_config_from_hf


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cfg = model_config_from_hf(args.hf)
    parallel = ParallelConfig(tp=1, pp=args.pp)
    validate_layout(cfg, parallel, args.pp, uneven_stages=True)
    # the parallel state is the policy's (even stages); only the value model is split unevenly
    info = init_parallel(dataclasses.replace(cfg, num_layers=4), parallel, seed=3)
    chunks = build_value_model(cfg, parallel, PrecisionConfig(), backbone_hf=args.hf, seed=7)
    layers = len(unwrap(chunks[0]).decoder.layers)
    assert layers == pipeline_stage_layers(cfg.num_layers, args.pp)[info.pp_rank], layers
    tokens = torch.randint(0, cfg.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": tokens, "position_ids": torch.arange(16).expand(4, -1).contiguous()}
    values = forward_only_collect(chunks, [batch], lambda out, b: {"v": out.squeeze(-1).float()}, 4)["v"]
    if info.rank == 0:
        torch.save(
            {"values": values, "layers_per_stage": pipeline_stage_layers(cfg.num_layers, args.pp)}, args.out
        )
    destroy_parallel()


if __name__ == "__main__":
    main()
