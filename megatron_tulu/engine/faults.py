"""Fault injection for crash/resume tests, driven by ``MEGATRON_TULU_FAULT``.

- ``crash_before_commit``: a checkpoint save dies after writing its shards, before the commit.
- ``kill_after_step:N``: a trainer SIGKILLs itself after finishing step N.
- ``kill_in_refit:N``: a learner SIGKILLs itself in the refit after update N, as it starts
  streaming its shards (the engines are waiting in the transfer).

``@R`` after a spec (``kill_in_refit:2@1``) limits it to global rank R (torchrun's ``RANK``), so
one rank of a job dies while the others run on.

A dying rank first kills its own helper processes (dist_checkpointing keeps a multiprocessing
manager alive), as a scheduler killing the job step would.
"""

from __future__ import annotations

import os
import signal


def _kill_self_and_children() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str, step: int | None = None) -> None:
    spec = os.environ.get("MEGATRON_TULU_FAULT", "")
    if not spec:
        return
    spec, _, rank = spec.partition("@")
    if rank and rank != os.environ.get("RANK", "0"):
        return
    if spec == name or (step is not None and spec == f"{name}:{step}"):
        _kill_self_and_children()
