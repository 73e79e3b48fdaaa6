"""Reshardable checkpoints with ``megatron.core.dist_checkpointing``, saved atomically and checksummed.

Layout of a checkpoint root::

    root/
      latest                    # text: name of the newest *complete* checkpoint (atomic replace)
      step_0000100/             # complete: renamed into place after every rank finished writing
        ...dist_checkpointing files of the unnamed model (``model_chunks=``)...
        value/ ...              # one sub-directory per named part (``parts={"value": ...}``)
        checksums.json          # {relative path: [size, sha256]} of every file above
        megatron_tulu.json      # our metadata (step, layout, parts), written last before the rename
      step_0000200.partial/     # a save in progress or interrupted: never picked as latest

A crash mid-save leaves only a ``.partial`` directory; ``find_latest`` ignores it. Every part of a
multi-model checkpoint (policy, value, their optimizers and schedulers) commits in the same rename.
Model, optimizer and scheduler state are saved as sharded tensors, so a checkpoint written at one
TP x PP layout loads at another. Per-rank RNG states are restored only when the world size matches.
Loads verify the checksums first (a flipped byte or a truncated shard is an error naming the file);
``resolve_resume`` implements ``checkpoint.resume: false | true | auto``; ``megatron-tulu checkpoint
verify DIR`` checks a checkpoint offline. The shard writers and dist_checkpointing's manager die
with the trainer whatever kills it (``engine/hygiene.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
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
from megatron_tulu.errors import CheckpointError

LATEST = "latest"
META = "megatron_tulu.json"
CHECKSUMS = "checksums.json"


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


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


# (model chunks, optimizer or None, scheduler or None) of one named model in a checkpoint.
Part = tuple[list[torch.nn.Module], MegatronOptimizer | None, OptimizerParamScheduler | None]
_PART_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_STEP_DIR = re.compile(r"^step_(\d+)(\.replaced)?$")


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
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for name in all_parts:
            if name:
                _part_dir(partial, name).mkdir()
    _barrier()
    extra = dict(extra or {}, step=step)
    for i, (name, (chunks, opt, sched)) in enumerate(all_parts.items()):
        state = _full_state_dict(
            chunks, opt, sched, extra if i == 0 else None, is_loading=False, with_rng=i == 0
        )
        dist_checkpointing.save(state, str(_part_dir(partial, name)))
        crash_point("crash_between_parts" if i + 1 < len(all_parts) else "crash_after_parts", step)
    _barrier()
    sums = _checksum_files(partial, sorted(_files_of(partial)))
    crash_point("crash_before_commit", step)
    if _rank() == 0:
        (partial / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
        meta = {
            "step": step,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "saved_at": time.time(),
            "parts": [name for name in all_parts if name],
            "extra_part": next(iter(all_parts)),
            **(meta or {}),
        }
        _fsync_write(partial / META, json.dumps(meta, indent=2))
        _commit(root, partial, final)
        _prune(root, keep_last, keep=final.name)
    _barrier()
    return final


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _commit(root: Path, partial: Path, final: Path) -> None:
    """Rename ``partial`` into place and point ``latest`` at it. A step saved again (a finished run
    resumed) moves the old copy aside as ``step_N.replaced`` first: :func:`find_latest` still finds
    it until the new one is in place, so no instant is without a complete checkpoint."""
    replaced = final.with_name(final.name + ".replaced")
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
    crash_point("crash_mid_commit", int(final.name.split("_")[1]))
    partial.rename(final)
    _write_latest(root, final.name)
    shutil.rmtree(replaced, ignore_errors=True)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    _fsync_write(tmp, name + "\n")
    os.replace(tmp, root / LATEST)  # atomic on POSIX


def _complete_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, newest step first (``step_N`` before its ``.replaced``)."""
    found = []
    for p in root.glob("step_*") if root.is_dir() else []:
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / META).is_file():
            found.append((int(m.group(1)), m.group(2) is None, p))
    return [p for *_, p in sorted(found, reverse=True)]


def _prune(root: Path, keep_last: int, keep: str) -> None:
    """Drop checkpoints beyond the newest ``keep_last`` and leftovers of interrupted saves. Each
    goes through a rename to ``*.deleting`` first, so a half-deleted directory never looks complete."""
    doomed = [p for p in root.glob("step_*.partial") if p.is_dir()]
    if keep_last > 0:
        doomed += [p for p in _complete_dirs(root) if p.name != keep][max(keep_last - 1, 0) :]
    for old in doomed:
        trash = old.with_name(old.name + ".deleting")
        try:
            old.rename(trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
    for trash in root.glob("*.deleting"):
        shutil.rmtree(trash, ignore_errors=True)


def find_latest(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` or None. Partial saves are never returned."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = ""  # a damaged pointer: fall back to the newest complete directory
        candidate = root / name
        if name and "/" not in name and (candidate / META).is_file():
            return candidate
    complete = _complete_dirs(root)
    return complete[0] if complete else None


# ---------------------------------------------------------------- checksums


def _files_of(ckpt: Path) -> list[str]:
    """Every file of a checkpoint, relative to it, except the ones written after the checksums."""
    return [
        str(p.relative_to(ckpt))
        for p in ckpt.rglob("*")
        if p.is_file() and p.name not in (CHECKSUMS, META) and not p.name.endswith(".tmp")
    ]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _my_share(names: list[str]) -> list[str]:
    """Round-robin share of ``names`` for this rank (all of them outside torch.distributed)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return names[_rank() :: world]


def _gather(obj: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _checksum_files(ckpt: Path, names: list[str]) -> dict[str, list[Any]]:
    """``{relative path: [size, sha256]}``, each rank hashing its round-robin share (collective)."""
    mine = {name: [(ckpt / name).stat().st_size, _sha256(ckpt / name)] for name in _my_share(names)}
    merged: dict[str, list[Any]] = {}
    for part in _gather(mine):
        merged.update(part)
    return merged


def checkpoint_problems(ckpt: str | os.PathLike, *, collective: bool = True) -> list[str]:
    """What is wrong with one checkpoint directory ([] when intact), one line per damaged file.

    Sizes are compared first (a truncated file costs nothing to find), then SHA-256. With
    ``collective`` (every rank calls it) the files are shared out across ranks. A checkpoint
    written before checksums existed reports nothing (it cannot be checked).
    """
    ckpt = Path(ckpt)
    if not (ckpt / META).is_file():
        return [f"{ckpt}: not a complete checkpoint ({META} missing)"]
    try:
        json.loads((ckpt / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{ckpt / META}: unreadable ({exc})"]
    sums_path = ckpt / CHECKSUMS
    if not sums_path.is_file():
        return []
    try:
        sums = json.loads(sums_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{sums_path}: unreadable ({exc})"]
    names = sorted(sums)
    share = _my_share(names) if collective else names
    problems = []
    for name in share:
        path = ckpt / name
        size, digest = sums[name]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{path}: truncated or extended ({path.stat().st_size} bytes, expected {size})")
        elif _sha256(path) != digest:
            problems.append(f"{path}: content does not match its checksum (corrupted)")
    if collective:
        problems = sorted(p for part in _gather(problems) for p in part)
    return problems


def verify_checkpoint(ckpt: str | os.PathLike, *, collective: bool = True) -> None:
    """Raise :class:`CheckpointError` naming every damaged file of ``ckpt``."""
    problems = checkpoint_problems(ckpt, collective=collective)
    if problems:
        raise CheckpointError(
            f"checkpoint {ckpt} is damaged: " + "; ".join(problems) + ". Resume from an older checkpoint "
            "(checkpoint.resume=auto picks the newest intact one) or re-run the save."
        )


# ---------------------------------------------------------------- resume


def resume_mode(value: Any) -> str:
    """``checkpoint.resume`` as one of "false", "true", "auto" (YAML booleans keep their meaning)."""
    text = str(value).strip().lower()
    if text in ("false", "no", "off", "0", "none", ""):
        return "false"
    if text in ("true", "yes", "on", "1"):
        return "true"
    if text == "auto":
        return "auto"
    raise CheckpointError(f"checkpoint.resume={value!r}: use false, true or auto")


def resolve_resume(checkpoint_cfg: Any, root: str | os.PathLike, *, log=print) -> Path | None:
    """Which checkpoint to resume from, per ``checkpoint.resume`` (collective: all ranks call it).

    - ``false``: None.
    - ``true``: the newest complete checkpoint under ``checkpoint.load_dir`` (default ``root``),
      verified against its checksums; nothing there, or damage, is an error naming the directory
      or file. A typo in a path never silently trains from scratch.
    - ``auto`` (preemptible schedulers): like ``true``, but a directory that never held a complete
      checkpoint starts fresh (and says so), and a damaged newest checkpoint falls back to the
      newest intact one (and says so).
    ``checkpoint.verify_on_load=false`` skips the checksums.
    """
    mode = resume_mode(getattr(checkpoint_cfg, "resume", False))
    if mode == "false":
        return None
    where = Path(getattr(checkpoint_cfg, "load_dir", None) or root)
    verify = bool(getattr(checkpoint_cfg, "verify_on_load", True))
    say = log if _rank() == 0 else (lambda *_: None)
    candidates = _complete_dirs(where)
    latest = find_latest(where)
    if latest is not None and latest in candidates:
        candidates.remove(latest)
    if latest is not None:
        candidates.insert(0, latest)
    if not candidates:
        pointer = where / LATEST
        if mode == "auto" and not pointer.exists():
            leftovers = sorted(p.name for p in where.glob("step_*")) if where.is_dir() else []
            note = f" (only interrupted saves: {', '.join(leftovers)})" if leftovers else ""
            say(
                f"[resume] checkpoint.resume=auto: {where} never held a complete checkpoint{note}; starting fresh"
            )
            return None
        if pointer.exists():
            raise CheckpointError(
                f"checkpoint.resume={mode}: {pointer} names {pointer.read_text(errors='replace').strip()!r}, but no complete "
                f"checkpoint is left in {where}; restore it or start fresh with checkpoint.resume=false"
            )
        raise CheckpointError(
            f"checkpoint.resume=true: no complete checkpoint in {where} "
            f"({'directory does not exist' if not where.exists() else 'no step_N directory with ' + META}); "
            "check checkpoint.load_dir / checkpoint.save_dir / train.output_dir, or use "
            "checkpoint.resume=auto to start fresh when there is nothing to resume"
        )
    skipped: list[str] = []
    for ckpt in candidates:
        problems = checkpoint_problems(ckpt) if verify else []
        if not problems:
            if skipped:
                say(f"[resume] falling back to {ckpt}: " + " | ".join(skipped))
            else:
                say(f"[resume] resuming from {ckpt}")
            return ckpt
        if mode == "true":
            verify_checkpoint(ckpt)  # raises, naming the files
        skipped.append(f"skipped damaged {ckpt.name} ({'; '.join(problems)})")
    raise CheckpointError(
        f"checkpoint.resume=auto: every checkpoint in {where} is damaged: " + " | ".join(skipped)
    )


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a checkpoint directory or of the latest checkpoint under a root."""
    path = Path(path)
    if not (path / META).is_file():
        latest = find_latest(path)
        if latest is None:
            raise CheckpointError(f"{path}: no complete megatron-tulu checkpoint here")
        path = latest
    try:
        return dict(json.loads((path / META).read_text()), path=str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / META}: unreadable checkpoint metadata ({exc})") from exc


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


def _unshare_adam_steps(optimizer: MegatronOptimizer) -> None:
    """Give every parameter its own AdamW ``step`` tensor again after a load.

    megatron-core 0.16.1's DistributedOptimizer without Apex/TE loads one ``step`` tensor into the
    torch AdamW state of every parameter, and AdamW advances ``step`` in place once per parameter:
    after a resume the count grew by the number of parameters each step, so the bias correction
    was wrong and training left the uninterrupted run (seen on GPU as a 0.2% loss difference two
    steps after a resume; reproduced on CPU: step 55 instead of 3 for the 27-parameter test model).
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        seen: set[int] = set()
        for state in inner.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.clone()
                seen.add(id(step))


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
    world = dist.get_world_size() if dist.is_initialized() else 1
    same_world = meta.get("world_size") == world
    extra: dict[str, Any] = {}
    for name, (chunks, opt, sched) in wanted.items():
        holds_extra = name == extra_part
        if opt is not None:
            _materialize_optimizer_state(opt)
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
            with _torch_adam_step_kept_aside(opt):
                opt.load_state_dict(loaded["optimizer"])
            _unshare_adam_steps(opt)
        if sched is not None and "scheduler" in loaded:
            sched.load_state_dict(loaded["scheduler"])
        if holds_extra:
            if same_world and "rng_state" in loaded:
                set_rng_state(loaded["rng_state"])
            extra = dict(loaded.get("extra", {}))
    if not extra:
        extra = {"step": meta.get("step", 0)}
    return extra


def verify_main(argv: list[str]) -> int:
    """`megatron-tulu checkpoint verify DIR...`: check every file of a checkpoint (or of every
    checkpoint under a root) against the checksums written at save. Exit 0 when intact, 2 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(prog="megatron-tulu checkpoint verify", description=verify_main.__doc__)
    parser.add_argument("dirs", nargs="+", help="a step_N directory or a checkpoint root")
    args = parser.parse_args(argv)
    bad = 0
    for d in map(Path, args.dirs):
        targets = [d] if (d / META).is_file() else _complete_dirs(d)
        if not targets:
            print(f"error: {d}: no complete megatron-tulu checkpoint here", file=sys.stderr)
            bad += 1
            continue
        for ckpt in targets:
            problems = checkpoint_problems(ckpt, collective=False)
            has_sums = (ckpt / CHECKSUMS).is_file()
            if problems:
                bad += 1
                for line in problems:
                    print(f"error: {line}", file=sys.stderr)
            else:
                n = len(json.loads((ckpt / CHECKSUMS).read_text())) if has_sums else 0
                print(
                    f"ok: {ckpt} ({n} files)" if has_sums else f"unchecked: {ckpt} (saved without checksums)"
                )
    return 2 if bad else 0


def main(argv: list[str]) -> int:
    """`megatron-tulu checkpoint verify DIR`."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: megatron-tulu checkpoint verify DIR [DIR...]\n\n" + (verify_main.__doc__ or ""))
        return 0
    if argv[0] != "verify":
        print(
            f"error: unknown checkpoint subcommand {argv[0]!r}; use: megatron-tulu checkpoint verify DIR",
            file=sys.stderr,
        )
        return 2
    return verify_main(argv[1:])
