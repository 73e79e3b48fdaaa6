"""Small collectives over the learner ranks (the default process group); no-ops in a world of one."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megatron_tulu.engine.job import DriverGate
from megatron_tulu.engine.train_step import collective_device


def _distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def share_from_driver(value: Any, gate: DriverGate | None = None) -> Any:
    """Broadcast a driver-side Python object to every learner rank. ``gate``: the other ranks wait
    for the driver in short slices first, so the broadcast (a collective bounded by
    ``parallel.distributed_timeout_minutes``) never includes the driver's work -- a generation or an
    evaluation can take longer than that timeout."""
    holder = [value]
    if _distributed():
        if gate is not None:
            gate.passage()
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce over the learner ranks (the default group); NCCL reduces device tensors only."""
    if not _distributed():
        return values
    device = collective_device()
    reduced = values.to(device) if device is not None else values.clone()
    dist.all_reduce(reduced, op=op)
    return reduced.cpu()


def tokens_everywhere(mask: torch.Tensor) -> float:
    """Sum of ``mask`` over every learner rank (each holds its share of the batch)."""
    return float(all_reduce(mask.sum().reshape(1).double()))
