"""Reshardable checkpoints with ``megatron.core.dist_checkpointing``: saving and loading them.

A checkpoint holds, for each part (a named model: policy, value, ...), its model, optimizer and
scheduler state as sharded tensors, so a checkpoint written at one TP x PP layout loads at another;
plus, once, the caller's ``extra`` (data position, pending batches) and the per-rank RNG states
(restored only when the world size matches). Every part of a multi-model checkpoint commits in the
same rename. The files, their checksums and the atomic ``latest`` are ``engine/checkpoint_format.py``;
choosing the checkpoint to resume from (``checkpoint.resume: false | true | auto``) is
``engine/checkpoint_resume.py``; the megatron-core 0.16.1 DistributedOptimizer load workarounds are
``engine/mcore_compat.py``; ``megatron-tulu checkpoint verify DIR`` is ``commands/checkpoint.py``.
Loads verify the checksums first (a flipped byte or a truncated shard is an error naming the file).
The shard writers and dist_checkpointing's manager die with the trainer whatever kills it
(``engine/hygiene.py``).

The names callers use from the other two modules (``find_latest``, ``read_meta``, ``META``,
``resolve_resume``, ...) are importable from here as well.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.optimizer.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_tulu.engine import mcore_compat
from megatron_tulu.engine.checkpoint_format import (
    CHECKSUMS,
    LATEST,
    META,
    barrier,
    checkpoint_name,
    checkpoint_problems,
    checksum_files,
    checksummed_files,
    commit,
    find_latest,
    fsync_write,
    prune,
    rank,
    read_meta,
    verify_checkpoint,
    world_size,
)
from megatron_tulu.engine.checkpoint_resume import resolve_resume, resume_mode
from megatron_tulu.engine.faults import crash_point
from megatron_tulu.engine.model import unwrap
from megatron_tulu.errors import CheckpointError

__all__ = [
    "CHECKSUMS",
    "LATEST",
    "META",
    "Part",
    "checkpoint_name",
    "checkpoint_problems",
    "find_latest",
    "load_checkpoint",
    "model_sharded_state_dict",
    "read_meta",
    "resolve_resume",
    "resume_mode",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]


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
    return ShardedObject("rng_state", data, (world_size(),), (rank(),), replica_id=0)


def _full_state_dict(
    model_chunks: list[torch.nn.Module],
    optimizer: MegatronOptimizer | None,
    scheduler: OptimizerParamScheduler | None,
    extra: dict[str, Any] | None,
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
    if extra is not None:
        state["extra"] = extra
    if with_rng:
        state["rng_state"] = _rng_sharded_object(rng_state())
    return state


# (model chunks, optimizer or None, scheduler or None) of one named model in a checkpoint.
Part = tuple[list[torch.nn.Module], MegatronOptimizer | None, OptimizerParamScheduler | None]
_PART_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _collect_parts(
    model_chunks: list[torch.nn.Module] | None,
    optimizer: MegatronOptimizer | None,
    scheduler: OptimizerParamScheduler | None,
    parts: dict[str, Part] | None,
) -> dict[str, Part]:
    """The default (unnamed, top-level) part first, then the named ones in the caller's order.
    ``parts[""]`` is the unnamed part too (a trainer names all its parts in one dict)."""
    out: dict[str, Part] = {}
    if model_chunks is not None:
        out[""] = (model_chunks, optimizer, scheduler)
    elif optimizer is not None or scheduler is not None:
        raise ValueError("optimizer/scheduler given without model_chunks; pass them inside parts=")
    for name, part in (parts or {}).items():
        if name == "" and "" in out:
            raise ValueError("the unnamed part given twice (model_chunks and parts[''])")
        if name and (not _PART_NAME.match(name) or name.startswith("step_")):
            raise ValueError(f"checkpoint part name {name!r}: use letters, digits, '_' or '-'")
        chunks, opt, sched = (tuple(part) + (None, None))[:3]
        out[name] = (chunks, opt, sched)
    if not out:
        raise ValueError("save/load_checkpoint needs model_chunks or parts")
    return out


def _part_dir(ckpt: Path, name: str) -> Path:
    return ckpt / name if name else ckpt


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model_chunks: list[torch.nn.Module] | None = None,
    optimizer: MegatronOptimizer | None = None,
    scheduler: OptimizerParamScheduler | None = None,
    extra: dict[str, Any] | None = None,
    keep_last: int = 0,
    meta: dict[str, Any] | None = None,
    *,
    parts: dict[str, Part] | None = None,
) -> Path:
    """Save everything needed to resume at ``step`` (collective over all ranks); returns its dir.

    ``parts`` saves several models in the same checkpoint, committed together (e.g.
    ``parts={"policy": (chunks, opt, sched), "value": (chunks, opt, sched)}``): each part goes to
    its own sub-directory of one ``step_N.partial/`` directory, which is renamed to ``step_N`` and
    then named by ``latest`` (atomic replace) only after every part, the per-file checksums and
    ``megatron_tulu.json`` are written. A kill at any instant leaves either the previous or the new
    checkpoint as the one :func:`find_latest` returns. ``model_chunks`` (the old single-model
    form) is the unnamed part, stored at the top level. ``extra`` (data position, pending batches;
    any picklable value) and the RNG states are stored once, with the first part.
    ``meta`` (JSON-able, e.g. the model config) goes into ``megatron_tulu.json`` for tools that
    need to know what a checkpoint holds before building a model.
    """
    from megatron_tulu.engine import hygiene

    hygiene.own_checkpoint_manager()  # shard writers and their manager die with this process
    all_parts = _collect_parts(model_chunks, optimizer, scheduler, parts)
    root = Path(root)
    final = root / checkpoint_name(step)
    partial = root / (checkpoint_name(step) + ".partial")
    if rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for name in all_parts:
            if name:
                _part_dir(partial, name).mkdir()
    barrier()
    extra = dict(extra or {}, step=step)
    for i, (name, (chunks, opt, sched)) in enumerate(all_parts.items()):
        state = _full_state_dict(
            chunks, opt, sched, extra if i == 0 else None, is_loading=False, with_rng=i == 0
        )
        dist_checkpointing.save(state, str(_part_dir(partial, name)))
        crash_point("crash_between_parts" if i + 1 < len(all_parts) else "crash_after_parts", step)
    barrier()
    sums = checksum_files(partial, sorted(checksummed_files(partial)))
    crash_point("crash_before_commit", step)
    if rank() == 0:
        (partial / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
        meta = {
            "step": step,
            "world_size": world_size(),
            "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "saved_at": time.time(),
            "parts": [name for name in all_parts if name],
            "extra_part": next(iter(all_parts)),
            **(meta or {}),
        }
        fsync_write(partial / META, json.dumps(meta, indent=2))
        commit(root, partial, final)
        prune(root, keep_last, keep=final.name)
    barrier()
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model_chunks: list[torch.nn.Module] | None = None,
    optimizer: MegatronOptimizer | None = None,
    scheduler: OptimizerParamScheduler | None = None,
    *,
    parts: dict[str, Part] | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Load into the (possibly differently laid out) models; returns the ``extra`` dict (with step).

    ``model_chunks`` loads the unnamed part, ``parts`` the named ones saved by
    :func:`save_checkpoint` (a subset is fine). ``verify`` checks every file against the checksums
    written at save first (collective), so a flipped byte is an error naming the file instead of
    silently wrong weights.
    """
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(f"{path}: not a complete megatron-tulu checkpoint (no {META})")
    meta = read_meta(path)
    if verify:
        verify_checkpoint(path)
    wanted = _collect_parts(model_chunks, optimizer, scheduler, parts)
    saved = [""] * (meta.get("extra_part", "") == "" or "parts" not in meta) + list(meta.get("parts", []))
    missing = [name or "(unnamed model)" for name in wanted if name not in saved]
    if missing:
        raise CheckpointError(f"{path}: has no part {', '.join(missing)} (it holds {saved or ['(unnamed)']})")
    extra_part = meta.get("extra_part", "")
    same_world = meta.get("world_size") == world_size()
    extra: dict[str, Any] = {}
    for name, (chunks, opt, sched) in wanted.items():
        holds_extra = name == extra_part
        if opt is not None:
            mcore_compat.prepare_for_load(opt)
        state = _full_state_dict(
            chunks,
            opt,
            sched,
            {} if holds_extra else None,
            is_loading=True,
            with_rng=same_world and holds_extra,
        )
        if sched is None:
            state.pop("scheduler", None)
        where = _part_dir(path, name)
        try:
            loaded = dist_checkpointing.load(state, str(where))
        except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{where}: could not read the checkpoint ({type(exc).__name__}: {str(exc)[:300]}); "
                f"run `megatron-tulu checkpoint verify {path}` to find the damaged file"
            ) from exc
        for i, chunk in enumerate(chunks):
            key = "model" if len(chunks) == 1 else f"model{i}"
            unwrap(chunk).load_state_dict(loaded[key], strict=False)
        if opt is not None:
            mcore_compat.load_state(opt, loaded["optimizer"])
        if sched is not None and "scheduler" in loaded:
            sched.load_state_dict(loaded["scheduler"])
        if holds_extra:
            if same_world and "rng_state" in loaded:
                set_rng_state(loaded["rng_state"])
            extra = dict(loaded.get("extra", {}))
    if not extra:
        extra = {"step": meta.get("step", 0)}
    return extra
