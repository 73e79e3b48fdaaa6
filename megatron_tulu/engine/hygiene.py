"""Helper processes die with their parent, whatever kills the parent.

Why: a trainer killed with SIGKILL (OOM killer, preemption, ``kill -9``) runs no ``finally`` block
and no exit handler, so every process it started lives on with ppid 1: dist_checkpointing's forked
shard writers (stuck in a futex, holding a copy of the model), its spawned ``multiprocessing``
manager, the resource tracker and verifier sandbox workers. On a preemptible cluster that is about
a gigabyte per kill. The kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is the one
mechanism that works for SIGKILL too, so:

- :func:`install` registers an at-fork hook: every child *forked from the main thread* (shard
  writers, forked vLLM/DataLoader workers) asks for SIGKILL when its parent dies. Children forked
  from other threads are left alone: the parent-death signal fires when the forking *thread* exits,
  which would kill a child that legitimately outlives a short-lived thread (the verifier sandbox
  ties its workers to their thread on purpose and calls :func:`die_with_parent` itself).
- :func:`install` also starts dist_checkpointing's results-queue manager itself (it is a *spawned*
  process, so no fork hook runs in it) with an initializer that sets the parent-death signal.
- The resource tracker exits by itself once every holder of its pipe (all of the above) is gone.
- Under torchrun each rank calls :func:`die_with_parent` at start, so killing the launcher takes
  the ranks, and through them their helpers, with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
_installed = False
_fork_origin: tuple[int, bool] = (0, False)
_manager = None  # keeps our dist_checkpointing results-queue manager alive


def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) exits.

    Returns False where prctl is unavailable (not Linux). If the parent already died before the
    request (the race between fork and prctl), exits at once: nobody would ever reap us.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)
    return True


def _before_fork() -> None:
    global _fork_origin
    _fork_origin = (os.getpid(), threading.current_thread() is threading.main_thread())


def _after_fork_in_child() -> None:
    parent, from_main_thread = _fork_origin
    if from_main_thread:
        die_with_parent(signal.SIGKILL, expected_parent=parent)


def _manager_initializer() -> None:
    """Runs first in the spawned manager server process (its parent is the trainer)."""
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer, which shuts us down


def install() -> None:
    """Idempotent; cheap after the first call. Called by the CLI and before every checkpoint save."""
    global _installed
    if _installed:
        return
    _installed = True
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def own_checkpoint_manager() -> None:
    """Create dist_checkpointing's write-results queue on a manager that dies with this process.

    megatron-core creates it lazily as ``mp.get_context("spawn").Manager().Queue()`` in
    ``strategies.filesystem_async``; a plain spawned manager outlives a SIGKILLed parent.
    Must run in the main thread (the parent-death signal follows the creating thread).
    """
    global _manager
    install()
    if _manager is not None or threading.current_thread() is not threading.main_thread():
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", None) is not None:
        return
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=_manager_initializer)
    filesystem_async._results_queue = manager.Queue()
    _manager = manager
