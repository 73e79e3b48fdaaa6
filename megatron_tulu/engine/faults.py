"""Fault injection for crash/resume tests, driven by ``MEGATRON_TULU_FAULT``.

- ``crash_before_commit``: a checkpoint save dies after writing its shards, before the commit.
- ``kill_after_step:N``: a trainer SIGKILLs itself after finishing step N.
- ``kill_in_refit:N``: a learner SIGKILLs itself in the refit after update N, as it starts
  streaming its shards (the engines are waiting in the transfer).
- ``sigusr1_after_step:N`` / ``sigterm_after_step:N``: a trainer sends itself that signal after
  step N (and its periodic checkpoint), just before the step boundary's stop check: a stop request
  that lands at a known step (engine/stop_request.py).

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


def _spec() -> str:
    """This rank's fault spec ("" when none applies here)."""
    spec, _, rank = os.environ.get("MEGATRON_TULU_FAULT", "").partition("@")
    return "" if rank and rank != os.environ.get("RANK", "0") else spec


def crash_point(name: str, step: int | None = None) -> None:
    spec = _spec()
    if spec and (spec == name or (step is not None and spec == f"{name}:{step}")):
        _kill_self_and_children()


def signal_point(step: int) -> None:
    """``sigusr1_after_step:N`` / ``sigterm_after_step:N``: signal this process after step N."""
    spec = _spec()
    for name, sig in (("sigusr1_after_step", signal.SIGUSR1), ("sigterm_after_step", signal.SIGTERM)):
        if spec == f"{name}:{step}":
            os.kill(os.getpid(), sig)
