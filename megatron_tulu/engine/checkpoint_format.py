"""The on-disk format of a checkpoint root: complete and partial directories, ``latest``, checksums.

Layout of a checkpoint root::

    root/
      latest                    # text: name of the newest *complete* checkpoint (atomic replace)
      step_0000100/             # complete: renamed into place after every rank finished writing
        ...dist_checkpointing files of the unnamed model...
        value/ ...              # one sub-directory per named part
        checksums.json          # {relative path: [size, sha256]} of every file above
        megatron_tulu.json      # our metadata (step, layout, parts), written last before the rename
      step_0000200.partial/     # a save in progress or interrupted: never picked as latest
      step_0000100.replaced/    # the old copy of a step saved again, until the new one is in place

A crash mid-save leaves only a ``.partial`` directory; :func:`find_latest` ignores it. What goes
into the directories (model, optimizer, scheduler, RNG) is ``engine/checkpoint.py``'s business;
this module knows files only, so it needs neither a model nor megatron-core: ``megatron-tulu
checkpoint verify DIR`` (``commands/checkpoint.py``) and the resume decision
(``engine/checkpoint_resume.py``) run on it alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_tulu.engine.faults import crash_point
from megatron_tulu.errors import CheckpointError

LATEST = "latest"
META = "megatron_tulu.json"
CHECKSUMS = "checksums.json"

_STEP_DIR = re.compile(r"^step_(\d+)(\.replaced)?$")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def commit(root: Path, partial: Path, final: Path) -> None:
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
    fsync_write(tmp, name + "\n")
    os.replace(tmp, root / LATEST)  # atomic on POSIX


def complete_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, newest step first (``step_N`` before its ``.replaced``)."""
    found = []
    for p in root.glob("step_*") if root.is_dir() else []:
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / META).is_file():
            found.append((int(m.group(1)), m.group(2) is None, p))
    return [p for *_, p in sorted(found, reverse=True)]


def prune(root: Path, keep_last: int, keep: str) -> None:
    """Drop checkpoints beyond the newest ``keep_last`` and leftovers of interrupted saves. Each
    goes through a rename to ``*.deleting`` first, so a half-deleted directory never looks complete."""
    doomed = [p for p in root.glob("step_*.partial") if p.is_dir()]
    if keep_last > 0:
        doomed += [p for p in complete_dirs(root) if p.name != keep][max(keep_last - 1, 0) :]
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
    complete = complete_dirs(root)
    return complete[0] if complete else None


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


# ---------------------------------------------------------------- checksums


def checksummed_files(ckpt: Path) -> list[str]:
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
    return names[rank() :: world_size()]


def _gather(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def checksum_files(ckpt: Path, names: list[str]) -> dict[str, list[Any]]:
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
