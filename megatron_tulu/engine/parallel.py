"""Start torch.distributed and Megatron-Core's ``parallel_state`` for a validated layout."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megatron_tulu.config.schema import ModelConfig, ParallelConfig
from megatron_tulu.config.transformer import megatron_parallel_sizes
from megatron_tulu.config.validate import validate_layout
from megatron_tulu.engine.cpu_compat import enable_cpu_compat
from megatron_tulu.engine.job import LOCAL_ONLY, job_env
from megatron_tulu.engine.network import configure_node_network, port_for_foreign_server


@dataclass(frozen=True)
class ParallelInfo:
    """Where this process sits in the TP x PP x DP grid."""

    world_size: int
    rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class LearnerWorld:
    """The learner ranks of a job whose other ranks have other roles (RLVR engines): the default
    process group, and so Megatron-Core, spans only these ``size`` ranks (``rank`` is this
    process's learner rank), rendezvousing through the job's store."""

    store: dist.Store
    rank: int
    size: int


def init_distributed(timeout_minutes: int = 30, world: LearnerWorld | None = None) -> None:
    """Join the torchrun world (or make a world of one, or the learner part of a job).
    NCCL on CUDA, gloo otherwise."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device_for_rank()
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if world is not None:
        dist.init_process_group(
            backend=backend,
            store=dist.PrefixStore("learners/", world.store),
            rank=world.rank,
            world_size=world.size,
            timeout=timeout,
        )
        return
    if "MASTER_PORT" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torchrun, or a caller that picked the port itself (a world of one unless it says more)
        job = job_env()  # loopback only for a world of one; a larger world must name MASTER_ADDR
        if job.world_size > 1:  # gloo / NCCL bind this node's shared interface, never 127.0.1.1
            configure_node_network(job.master_addr, job.nodes)
        for key, value in (("MASTER_ADDR", job.master_addr), ("RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        dist.init_process_group(backend=backend, timeout=timeout)
        return
    # A world of one outside torchrun: a fresh port each time, so back-to-back runs (or stages of
    # one pipeline process) never collide with a store port still in TIME_WAIT.
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{LOCAL_ONLY}:{port_for_foreign_server(LOCAL_ONLY)}",
        rank=0,
        world_size=1,
        timeout=timeout,
    )


def init_parallel(
    model: ModelConfig, parallel: ParallelConfig, seed: int = 1234, world: LearnerWorld | None = None
) -> ParallelInfo:
    """Validate the layout, then initialise distributed state, model-parallel groups and RNG.

    The layout is checked against ``WORLD_SIZE`` (or ``world.size``: the learner ranks of a job
    with other roles) *before* any process group is created, so a bad Hydra override fails at
    once with a message instead of hanging in a collective.
    """
    world_size = world.size if world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    dp = validate_layout(model, parallel, world_size)
    enable_cpu_compat()
    init_distributed(parallel.distributed_timeout_minutes, world)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        **megatron_parallel_sizes(parallel), distributed_timeout_minutes=parallel.distributed_timeout_minutes
    )
    # Same data on every DP rank is not what we want for dropout-free models either way; seeds
    # differ per PP stage so layers on different stages do not get identical initial weights.
    model_parallel_cuda_manual_seed(seed + 100 * parallel_state.get_pipeline_model_parallel_rank())
    torch.manual_seed(seed)
    return ParallelInfo(
        world_size=world_size,
        rank=dist.get_rank(),
        tp=parallel.tp,
        pp=parallel.pp,
        dp=dp,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        device=device_for_rank(),
    )


def destroy_parallel() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
