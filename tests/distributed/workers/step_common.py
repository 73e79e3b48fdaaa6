"""What the layout workers share: their command line and parallel set-up, the optimizer of a
gradient comparison, and the result rank 0 saves."""

import argparse

import torch

from megatron_tulu.config.schema import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine.optimizer import build_optimizer
from megatron_tulu.engine.parallel import init_parallel
from megatron_tulu.engine.train_step import prepare_model_for_training
from megatron_tulu.models.hf_io import collect_hf_state_on_rank0, model_config_from_hf


def layout_parser(*, batches: bool = True) -> argparse.ArgumentParser:
    """``--hf DIR [--tp N] [--pp N] --out FILE`` and, with ``batches``, ``--micro-batch`` (2) and
    ``--global-batch`` (8)."""
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--out", required=True)
    if batches:
        p.add_argument("--micro-batch", type=int, default=2)
        p.add_argument("--global-batch", type=int, default=8)
    return p


def init_layout(args: argparse.Namespace, seed: int = 1, **parallel_options):
    """The ``--hf`` model's config, the ``--tp`` x ``--pp`` layout (and ``parallel_options``) and this
    rank's place in it (parallel state initialised)."""
    cfg = model_config_from_hf(args.hf)
    parallel = ParallelConfig(tp=args.tp, pp=args.pp, **parallel_options)
    return cfg, parallel, init_parallel(cfg, parallel, seed=seed)


def step_optimizer(chunks, parallel):
    """Adam for one compared step: the gradients are read raw (no clipping), eps well above fp32
    round-off."""
    optimizer = build_optimizer(
        chunks, OptimizerConfig(lr=1e-3, adam_eps=1e-4, clip_grad=1e9), parallel, PrecisionConfig()
    )
    prepare_model_for_training(chunks, optimizer)
    return optimizer


def save_step(chunks, model_cfg, rank: int, out: str, **result) -> None:
    """Rank 0 saves ``result`` with the HF-named gradients (``main_grad``) and the log-prob paths taken
    (the worker imports ``head_spy`` first, so it sees every path)."""
    import head_spy

    grads = collect_hf_state_on_rank0(chunks, model_cfg, accessor=lambda prm: prm.main_grad)
    if rank == 0:
        torch.save({**result, "grads": grads, "paths": head_spy.paths()}, out)
