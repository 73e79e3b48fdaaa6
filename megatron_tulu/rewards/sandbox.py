"""Hard wall-clock limit for verifier calls, usable from any thread and any process.

Why not `signal.alarm`: it only works in the main thread, and CPU-bound C code (a big-integer power
inside sympy, a catastrophic regex) does not look at signals until it finishes. Instead each
calling thread owns one persistent *forked* worker process. A call pickles the task down a pipe;
the caller waits on the answer pipe with a deadline and, on overrun, SIGKILLs the worker and forks a
fresh one on the next call. Forking rather than spawning means a replacement starts in
milliseconds, already has every module imported and every verifier registered (including ones
defined in a user's script), and works from daemonic pool workers that may not start
`multiprocessing` children.

Process hygiene: a worker asks the kernel for SIGKILL when its parent dies (prctl
PR_SET_PDEATHSIG, see engine/hygiene.py), so a SIGKILLed trainer or `verify` leaves no worker
behind, even one stuck in a runaway task that never reads its pipe again.

Known limitation: forking a process that has other threads holding locks can leave such a lock
held in the worker; a verifier touching it would hang, be killed at the limit and score 0.
Python's own locks (logging, import) are reset after fork, so this does not happen in practice.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from megatron_tulu.engine.hygiene import die_with_parent

_HEADER = struct.Struct("!Q")


class SandboxTimeout(Exception):
    """The task did not finish within its time limit; its worker was killed."""


class SandboxCrash(Exception):
    """The worker died while running the task (e.g. killed by the OOM killer)."""


class SandboxTaskError(Exception):
    """The task raised; the message carries the worker-side exception type, text and traceback."""

    def __init__(self, type_name: str, message: str, trace: str):
        self.type_name = type_name
        self.trace = trace
        super().__init__(f"{type_name}: {message}")


# True inside a worker: nested calls then run inline instead of forking grandchildren.
_inside_worker = False


def _write_message(fd: int, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise SandboxTimeout()
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise SandboxCrash("worker closed its pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int, deadline: float | None) -> Any:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _worker_loop(read_fd: int, write_fd: int) -> None:
    global _inside_worker
    _inside_worker = True
    # Ctrl-C goes to the whole process group; the parent decides what happens to its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            fn, args, kwargs = _read_message(read_fd, None)
        except (SandboxCrash, EOFError, OSError):
            return  # parent went away
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # report everything, including RecursionError/MemoryError
            reply = ("error", type(exc).__name__, str(exc)[:2000], traceback.format_exc(limit=20)[-4000:])
        try:
            _write_message(write_fd, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _write_message(write_fd, ("error", type(exc).__name__, f"unpicklable result: {exc}", ""))


class _Worker:
    def __init__(self, generation: int):
        to_worker_read, to_worker_write = os.pipe()
        from_worker_read, from_worker_write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked worker
            try:
                # Die with the owning thread's process even on SIGKILL (a worker busy in a runaway
                # regex would never read the EOF of its pipe). The signal follows the forking
                # thread, which matches the ownership rule: one worker per calling thread.
                die_with_parent(signal.SIGKILL, expected_parent=parent)
                os.close(to_worker_write)
                os.close(from_worker_read)
                _close_inherited_worker_pipes()
                _worker_loop(to_worker_read, from_worker_write)
            finally:
                os._exit(0)
        os.close(to_worker_read)
        os.close(from_worker_write)
        self.pid = pid
        self.owner_pid = os.getpid()
        self.owner_thread = threading.current_thread()
        self.closed = False
        self.generation = generation
        self.write_fd = to_worker_write
        self.read_fd = from_worker_read
        with _live_lock:
            _live_workers.add(self)

    def call(self, fn: Callable[..., Any], args: tuple, kwargs: dict, time_limit: float | None) -> Any:
        deadline = None if time_limit is None else time.monotonic() + time_limit
        _write_message(self.write_fd, (fn, args, kwargs))
        reply = _read_message(self.read_fd, deadline)
        if reply[0] == "ok":
            return reply[1]
        raise SandboxTaskError(*reply[1:])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with _live_lock:
            _live_workers.discard(self)
        for fd in (self.write_fd, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.owner_pid != os.getpid():
            return  # inherited across a fork: the worker belongs to our parent, not to us
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


_live_lock = threading.Lock()
_live_workers: set[_Worker] = set()
_thread_state = threading.local()


def _close_inherited_worker_pipes() -> None:
    # A new worker must not keep other workers' pipe ends open, or those workers would never see
    # EOF when their owner exits.
    for worker in list(_live_workers):
        for fd in (worker.write_fd, worker.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
    _live_workers.clear()


def _reap_orphaned_workers() -> None:
    # Workers whose owning thread has exited (e.g. a finished thread pool) would otherwise live
    # until interpreter exit.
    with _live_lock:
        orphans = [w for w in _live_workers if w.owner_pid == os.getpid() and not w.owner_thread.is_alive()]
    for worker in orphans:
        worker.close()


def _current_worker(generation: int) -> _Worker:
    worker: _Worker | None = getattr(_thread_state, "worker", None)
    if worker is not None and (
        worker.closed or worker.owner_pid != os.getpid() or worker.generation != generation
    ):
        worker.close()
        worker = None
    if worker is None:
        _reap_orphaned_workers()
        worker = _Worker(generation)
        _thread_state.worker = worker
    return worker


def _discard_current_worker() -> None:
    worker = getattr(_thread_state, "worker", None)
    if worker is not None:
        worker.close()
        _thread_state.worker = None


def run_with_time_limit(
    fn: Callable[..., Any],
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    *,
    time_limit: float | None,
    generation: int = 0,
) -> Any:
    """Run `fn(*args, **kwargs)` in this thread's worker process, killing it after `time_limit` s.

    `fn` must be picklable by reference (a module-level function). Raises SandboxTimeout,
    SandboxCrash or SandboxTaskError. `time_limit=None` runs inline in the calling thread with no
    limit (also the behaviour inside a worker). `generation` identifies the state the worker must
    have been forked from; a different value forks a new worker.
    """
    kwargs = kwargs or {}
    if time_limit is None or _inside_worker:
        return fn(*args, **kwargs)
    worker = _current_worker(generation)
    try:
        return worker.call(fn, args, kwargs, time_limit)
    except BrokenPipeError:
        # The worker died between calls (killed from outside): retry once on a fresh one.
        _discard_current_worker()
        worker = _current_worker(generation)
    except (SandboxTimeout, SandboxCrash):
        _discard_current_worker()
        raise
    try:
        return worker.call(fn, args, kwargs, time_limit)
    except (SandboxTimeout, SandboxCrash, BrokenPipeError) as exc:
        _discard_current_worker()
        if isinstance(exc, BrokenPipeError):
            raise SandboxCrash("worker died before reading its task") from exc
        raise


def shutdown_workers() -> None:
    """Kill every worker this process started (also registered with atexit)."""
    with _live_lock:
        workers = [w for w in _live_workers if w.owner_pid == os.getpid()]
    for worker in workers:
        worker.close()
    _thread_state.worker = None


atexit.register(shutdown_workers)
