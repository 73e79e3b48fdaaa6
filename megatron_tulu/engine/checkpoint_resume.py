"""Which checkpoint a run resumes from: ``checkpoint.resume: false | true | auto``.

The decision reads the on-disk format only (``engine/checkpoint_format.py``): the ``latest``
pointer, the complete ``step_N`` directories and their checksums. Loading the chosen checkpoint is
``engine/checkpoint.load_checkpoint``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from megatron_tulu.engine.checkpoint_format import (
    LATEST,
    META,
    checkpoint_problems,
    complete_dirs,
    find_latest,
    rank,
    verify_checkpoint,
)
from megatron_tulu.errors import CheckpointError


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
    say = log if rank() == 0 else (lambda *_: None)
    candidates = complete_dirs(where)
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
