"""Liveness of a job's ranks: heartbeats in the job store at O(world) requests per interval, and
making sure nothing of a rank outlives it.

Heartbeats (:class:`Watchdog`). Each rank owns one store key, ``live/<rank>``, whose value is its
state: a beat counter, ``done``, ``failed:<why>``, or ``verdict:<why>`` (written by a monitor).

- every rank, every ``interval_s``: one ``compare_set(live/<rank>, <n>, <n + 1>)``. The answer is
  the key's value after the call, so the same request both beats and tells the rank whether a
  monitor has replaced its counter with a verdict (then it ends with that verdict's error line);
- a **monitor** (the first rank of each node, and a second rank in a one-node job so a dead monitor
  is still seen) additionally reads every rank's key in one ``multi_get``. A counter that has not
  moved for ``timeout_s`` of the monitor's own clock (no clock agreement between nodes) is a dead
  rank; ``failed:`` is a rank that reported its failure (often only the messenger: a few more beats
  are given to find a silent one). The monitor then writes ``verdict:<who died>`` into every other
  live rank's key with one ``multi_set`` and ends its own process.

Per interval that is world + monitors requests (about 1 + 1/gpus_per_node per rank) instead of the
world² reads of every rank watching every other. A store that stops answering (node 0's launcher
is gone) ends every rank at its next beat. Dead ranks are named within ``timeout_s`` plus a couple
of intervals on every survivor.

Processes (:func:`guard_process_group`, :func:`kill_descendants`): vLLM's engine core is spawned
(no fork hook, no parent-death signal), so a SIGKILLed rank would leave it running; a tiny guard
in the rank's process group kills the group once the rank is gone, however it died.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["Watchdog", "guard_process_group", "kill_descendants", "monitor_ranks"]

_DONE, _FAILED, _VERDICT = b"done", b"failed:", b"verdict:"


def monitor_ranks(world_size: int, local_world_size: int) -> list[int]:
    """The ranks that read everyone's heartbeat: the first of each node, plus the last rank of a
    one-node job (a monitor that dies must itself be seen by another monitor)."""
    firsts = list(range(0, world_size, max(1, local_world_size)))
    if len(firsts) == 1 and world_size > 1:
        firsts.append(world_size - 1)
    return firsts


def kill_descendants() -> int:
    """SIGKILL every process this one started, recursively (vLLM's engine core and workers).
    Returns how many were signalled."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=10)
    return len(children)


_GUARD: object = None  # the write end of the guard's pipe, held for this process's lifetime


def guard_process_group() -> bool:
    """When this process leads its process group (every torchrun rank does), start a tiny guard
    in the group that SIGKILLs whatever is left of the group once this process is gone, however it
    died. vLLM's engine core is *spawned* (no fork hook, no parent-death signal) and does not exit
    when the process that started it is SIGKILLed; torchrun does not signal the group of a rank
    that already died. The guard blocks reading a pipe only this process writes to; end of file
    means this process exited. Returns whether a guard runs."""
    global _GUARD
    if _GUARD is not None:
        return True
    if os.name != "posix" or os.getpgid(0) != os.getpid():
        return False
    import subprocess

    read_end, write_end = os.pipe()
    subprocess.Popen(
        ["sh", "-c", 'cat >/dev/null; kill -9 -- "-$0" 2>/dev/null', str(os.getpid())],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    os.close(read_end)
    _GUARD = os.fdopen(write_end, "wb")
    return True


class Watchdog:
    """Heartbeats through the job store; ends this process when a rank of the job falls silent.

    See the module docstring for the protocol. ``monitor``: whether this rank reads everyone's
    state (:func:`monitor_ranks`). ``on_failure(message)`` ends the process (default: one
    ``error:`` line naming the rank(s) and their role, children killed, exit code 1); tests pass a
    recorder. A rank that finished cleanly calls :meth:`finish` so its silence is not a failure."""

    def __init__(
        self,
        store,
        rank: int,
        world: list[int],
        describe: Callable[[int], str],
        timeout_s: float,
        interval_s: float = 1.0,
        on_failure: Callable[[str], None] | None = None,
        monitor: bool = True,
        startup_grace_s: float = 600.0,
    ):
        self.store, self.rank, self.world = store, rank, list(world)
        self.peers = [p for p in self.world if p != rank]
        self.describe, self.timeout_s, self.interval_s = describe, timeout_s, interval_s
        self.monitor = monitor
        # ranks start at different times (imports, a slow node): one not yet beating is given this
        # long (or timeout_s, if longer) before it counts as dead
        self.startup_grace_s = max(startup_grace_s, timeout_s)
        self.on_failure = on_failure or _fail_process
        self.failure: str | None = None  # the verdict, once there is one
        self._stop = threading.Event()
        self._quiet = False  # this rank reported its own end: its key no longer holds a counter
        self._beats = 1
        self.store.set(self._key(rank), str(self._beats))
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    @staticmethod
    def _key(rank: int) -> str:
        return f"live/{rank}"

    def check(self) -> None:
        """Raise if this rank has been told to stop (for waits that poll: control channel, gates)."""
        if self.failure is not None:
            raise RuntimeError(f"the job is failing: {self.failure}")

    # ------------------------------------------------------------------------------ the loop
    def _beat(self) -> bytes | None:
        """One request: advance this rank's counter; returns a verdict if a monitor wrote one."""
        expected, desired = str(self._beats).encode(), str(self._beats + 1).encode()
        now = self.store.compare_set(self._key(self.rank), expected, desired)
        if now == desired:
            self._beats += 1
            return None
        return now

    def _run(self) -> None:
        seen: dict[int, tuple[bytes | None, float]] = {}
        started = time.monotonic()
        all_present = False
        first_failure: float | None = None
        while not self._stop.wait(self.interval_s):
            try:
                if self._quiet:
                    return
                told = self._beat()
                if told is not None:
                    if self._stop.is_set() or self._quiet:
                        return
                    if told.startswith(_VERDICT):
                        self._fail(told[len(_VERDICT) :].decode(errors="replace"))
                    else:  # nothing of ours writes anything else there: say what is there
                        self._fail(f"rank {self.rank}'s heartbeat key was overwritten with {told[:80]!r}")
                    return
                if not self.monitor:
                    continue
                keys = [self._key(p) for p in self.peers]
                if not all_present:
                    all_present = bool(self.store.check(keys)) if keys else True
                values = self.store.multi_get(keys) if all_present and keys else None
            except Exception as exc:  # the store itself is gone: node 0's launcher exited
                if self._stop.is_set():
                    return
                self._fail(
                    f"the job store stopped answering ({type(exc).__name__}: {exc}); node 0's launcher is gone"
                )
                return
            now = time.monotonic()
            if values is None:  # some ranks have not started yet
                if now - started > self.startup_grace_s:
                    missing = [p for p in self.peers if not self.store.check([self._key(p)])]
                    self._declare(
                        [f"rank {p} ({self.describe(p)}) never started its heartbeat" for p in missing]
                    )
                    return
                continue
            silent, failed = [], []
            # once a rank reported a failure, a few missed beats are enough to call a rank dead
            limit = self.timeout_s if first_failure is None else 3 * self.interval_s
            for peer, value in zip(self.peers, values):
                if value == _DONE:
                    continue
                if value.startswith(_VERDICT):  # another monitor already decided
                    self._fail(value[len(_VERDICT) :].decode(errors="replace"))
                    return
                if value.startswith(_FAILED):
                    failed.append((peer, value[len(_FAILED) :].decode(errors="replace")))
                    continue
                last, since = seen.get(peer, (None, started))
                if value != last:
                    seen[peer] = (value, now)
                elif now - since > limit:
                    silent.append((peer, now - since))
            if failed and first_failure is None:
                # A rank reporting a failure is often only the messenger (its launcher stopped it
                # because another rank of its node died): look a few beats longer for a silent one.
                first_failure = now
                continue
            if silent or (failed and now - first_failure > 5 * self.interval_s):
                parts = [
                    f"rank {p} ({self.describe(p)}) silent for {s:.0f} s (killed or hung)" for p, s in silent
                ]
                parts += [f"rank {p} ({self.describe(p)}) failed: {why}" for p, why in failed]
                self._declare(parts)
                return

    def _declare(self, parts: list[str]) -> None:
        """Tell every live rank (one multi_set), then end this one."""
        message = "; ".join(parts)
        try:
            keys = [self._key(p) for p in self.world]
            values = self.store.multi_get(keys) if self.store.check(keys) else [b""] * len(keys)
            tell = [k for k, v in zip(keys, values) if v != _DONE and not v.startswith(_FAILED)]
            if tell:
                self.store.multi_set(tell, [_VERDICT + message.encode()] * len(tell))
        except Exception:
            pass  # the other monitors still see the dead rank themselves
        self._fail(message)

    def _fail(self, message: str) -> None:
        self.failure = message
        if not self._stop.is_set():
            self.on_failure(message)

    # ------------------------------------------------------------------------------ queries
    def diagnose(self, wait_s: float | None = None) -> str:
        """Which ranks look dead: those whose counter does not move over ``wait_s`` (default 4
        beats) or that reported a failure. For the error line of a rank that fails because a peer
        died (a closed connection says nothing about who). Two requests."""
        wait_s = 4 * self.interval_s if wait_s is None else wait_s
        keys = [self._key(p) for p in self.peers]
        try:
            before = self.store.multi_get(keys)
            time.sleep(wait_s)
            after = self.store.multi_get(keys)
        except Exception:
            return "the job store stopped answering (node 0's launcher is gone)"
        silent, failed = [], []
        for p, b, a in zip(self.peers, before, after):
            if a.startswith(_FAILED):
                failed.append((p, a[len(_FAILED) :].decode(errors="replace")))
            elif a != _DONE and not a.startswith(_VERDICT) and a == b:
                silent.append(p)
        parts = [f"rank {p} ({self.describe(p)}) silent (killed or hung)" for p in silent]
        parts += [f"rank {p} ({self.describe(p)}) failed: {why}" for p, why in failed]
        return "; ".join(parts)

    # ------------------------------------------------------------------------------ endings
    def report_failure(self, reason: str) -> None:
        """Tell the monitors this rank is failing (they act at once instead of waiting for silence)."""
        self._quiet = True
        try:
            self.store.set(self._key(self.rank), (_FAILED.decode() + reason)[:500])
        except Exception:
            pass

    def finish(self) -> None:
        """This rank ended cleanly: stop beating and let the monitors know its silence is expected."""
        self._stop.set()
        self._quiet = True
        try:
            self.store.set(self._key(self.rank), _DONE)
        except Exception:
            pass

    def stop(self) -> None:
        self._stop.set()

    def watch_sigterm(self, grace_s: float = 5.0) -> None:
        """Name the dead peer even when this rank is stopped while stuck in a collective.

        When a rank dies, torchrun stops the other ranks of its node with SIGTERM and SIGKILLs them
        30 s later. A rank blocked in a C++ collective (a refit waiting for the dead peer) cannot
        run Python's SIGTERM handler in that time, so its error line naming the culprit would never
        be printed. The C-level handler still writes the signal number to the wakeup fd; a thread
        reading it waits ``grace_s`` for the main thread's handler to run, and if it has not, reports
        the failure, names the silent peers and ends the process (children first). Call from the
        main thread, after the SIGTERM handler is installed."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        handled = threading.Event()

        def python_handler(signum, frame):
            handled.set()  # the main thread runs Python: the normal path (SystemExit) reports
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(128 + signum)

        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.signal(signal.SIGTERM, python_handler)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

        def watch() -> None:
            while True:
                data = os.read(read_fd, 64)
                if signal.SIGTERM in data and not handled.wait(grace_s):
                    self.report_failure(
                        "stopped by SIGTERM while blocked (a launcher stops its node's ranks when one dies)"
                    )
                    culprits = self.diagnose()
                    _fail_process(
                        f"{culprits}; rank {self.rank} was stuck in a collective when stopped"
                        if culprits
                        else "stopped by SIGTERM while stuck in a collective"
                    )
                    return

        threading.Thread(target=watch, name="sigterm-watch", daemon=True).start()


def _fail_process(message: str) -> None:
    print(
        f"error: {message}; stopping this rank (rank {os.environ.get('RANK', '0')})",
        file=sys.stderr,
        flush=True,
    )
    kill_descendants()
    os._exit(1)
