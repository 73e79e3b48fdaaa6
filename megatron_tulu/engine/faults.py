"""Fault injection for crash/resume tests, driven by ``MEGATRON_TULU_FAULT``.

- ``crash_before_commit``: a checkpoint save dies after writing its shards, before the commit.
- ``kill_after_step:N``: a trainer SIGKILLs itself after finishing step N.

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
    if spec == name or (step is not None and spec == f"{name}:{step}"):
        _kill_self_and_children()
