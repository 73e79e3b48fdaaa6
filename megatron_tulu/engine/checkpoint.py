"""Reshardable checkpoints with ``megatron.core.dist_checkpointing``, saved atomically.

Layout of a checkpoint root::

    root/
      latest                    # text: name of the newest *complete* checkpoint (atomic replace)
      step_0000100/             # complete: renamed into place after every rank finished writing
        ...dist_checkpointing files...
        megatron_tulu.json      # our metadata (step, layout), written last before the rename
      step_0000200.partial/     # a save in progress or interrupted: never picked as latest

A crash mid-save leaves only a ``.partial`` directory; ``find_latest`` ignores it.
Model, optimizer and scheduler state are saved as sharded tensors, so a checkpoint written at one
TP x PP layout loads at another. Per-rank RNG states are restored only when the world size matches.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.optimizer.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_tulu.engine.faults import crash_point
from megatron_tulu.engine.model import unwrap

LATEST = "latest"
META = "megatron_tulu.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def model_sharded_state_dict(model_chunks: list[torch.nn.Module]) -> dict[str, Any]:
    if len(model_chunks) == 1:
        return {"model": unwrap(model_chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rng_sharded_object(data: Any) -> ShardedObject:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return ShardedObject("rng_state", data, (world,), (_rank(),), replica_id=0)


def _full_state_dict(
    model_chunks: list[torch.nn.Module],
    optimizer: MegatronOptimizer | None,
    scheduler: OptimizerParamScheduler | None,
    extra: dict[str, Any],
    *,
    is_loading: bool,
    with_rng: bool,
) -> dict[str, Any]:
    state = model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        # Megatron's DistributedOptimizer defaults to a flattened-range format that this
        # dist_checkpointing release rejects; "fully_reshardable" also reshards across TP/PP/DP.
        state["optimizer"] = optimizer.sharded_state_dict(
            state, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"}
        )
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["extra"] = extra
    if with_rng:
        state["rng_state"] = _rng_sharded_object(rng_state())
    return state


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model_chunks: list[torch.nn.Module],
    optimizer: MegatronOptimizer | None = None,
    scheduler: OptimizerParamScheduler | None = None,
    extra: dict[str, Any] | None = None,
    keep_last: int = 0,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save everything needed to resume at ``step`` (collective over all ranks).

    ``meta`` (JSON-able, e.g. the model config) goes into ``megatron_tulu.json`` for tools that
    need to know what a checkpoint holds before building a model.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    partial = root / (checkpoint_name(step) + ".partial")
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    _barrier()
    extra = dict(extra or {}, step=step)
    state = _full_state_dict(model_chunks, optimizer, scheduler, extra, is_loading=False, with_rng=True)
    dist_checkpointing.save(state, str(partial))
    crash_point("crash_before_commit")
    _barrier()
    if _rank() == 0:
        meta = {
            "step": step,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "saved_at": time.time(),
            **(meta or {}),
        }
        (partial / META).write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        _write_latest(root, final.name)
        _prune(root, keep_last)
    _barrier()
    return final


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)  # atomic on POSIX


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    complete = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / META).is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def find_latest(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` or None. Partial saves are never returned."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / META).is_file():
            return candidate
    complete = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / META).is_file())
    return complete[-1] if complete else None


def _materialize_optimizer_state(optimizer: MegatronOptimizer) -> None:
    """Give a fresh DistributedOptimizer its Adam state before a load.

    Without Apex/TE, ``DistributedOptimizer.state_dict()`` (called while building the loading
    state dict) needs torch's per-parameter ``step``; Megatron only creates placeholder state for
    its FSDP format. The placeholder step runs with lr = weight decay = 0, so no parameter moves,
    and every value is then overwritten by the checkpoint.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner.state or not hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            continue
        saved = [(g["lr"], g.get("weight_decay", 0.0)) for g in inner.param_groups]
        for g in inner.param_groups:
            g["lr"], g["weight_decay"] = 0.0, 0.0
        opt._init_optimizer_states_with_dummy_values()
        for g, (lr, wd) in zip(inner.param_groups, saved):
            g["lr"], g["weight_decay"] = lr, wd


@contextlib.contextmanager
def _torch_adam_step_kept_aside(optimizer: MegatronOptimizer):
    """Work around megatron-core 0.16.1 + torch AdamW (no Apex/TE) in the DistributedOptimizer:
    ``load_parameter_state_from_fully_reshardable`` copies every key of the live Adam state from
    the checkpoint, but ``step`` is restored separately and is not in the checkpointed tensors.
    Hide ``step`` while each parameter's state is copied, then put it back."""
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not hasattr(opt, "_set_main_param_and_optimizer_states"):
            continue
        original = opt._set_main_param_and_optimizer_states

        def copy_without_step(model_param, tensors, _opt=opt, _orig=original):
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            state = _opt.optimizer.state[_opt.optimizer.param_groups[group_index]["params"][group_order]]
            step = state.pop("step", None) if "step" not in tensors else None
            try:
                _orig(model_param, tensors)
            finally:
                if step is not None:
                    state["step"] = step

        opt._set_main_param_and_optimizer_states = copy_without_step
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states  # back to the class method


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a checkpoint directory or of the latest checkpoint under a root."""
    path = Path(path)
    if not (path / META).is_file():
        latest = find_latest(path)
        if latest is None:
            raise FileNotFoundError(f"{path}: no complete megatron-tulu checkpoint here")
        path = latest
    return dict(json.loads((path / META).read_text()), path=str(path))


def load_checkpoint(
    path: str | os.PathLike,
    model_chunks: list[torch.nn.Module],
    optimizer: MegatronOptimizer | None = None,
    scheduler: OptimizerParamScheduler | None = None,
) -> dict[str, Any]:
    """Load into the (possibly differently laid out) model; returns the ``extra`` dict (with step)."""
    path = Path(path)
    if not (path / META).is_file():
        raise FileNotFoundError(f"{path}: not a complete megatron-tulu checkpoint (no {META})")
    meta = json.loads((path / META).read_text())
    world = dist.get_world_size() if dist.is_initialized() else 1
    same_world = meta.get("world_size") == world
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
    state = _full_state_dict(model_chunks, optimizer, scheduler, {}, is_loading=True, with_rng=same_world)
    if scheduler is None:
        state.pop("scheduler", None)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        unwrap(chunk).load_state_dict(loaded[key], strict=False)
    if optimizer is not None:
        with _torch_adam_step_kept_aside(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None and "scheduler" in loaded:
        scheduler.load_state_dict(loaded["scheduler"])
    if same_world and "rng_state" in loaded:
        set_rng_state(loaded["rng_state"])
    return dict(loaded.get("extra", {}))
