"""One ``torchrun`` world split into roles: the store, addresses, a control channel and liveness.

An RLVR job is a single ``torchrun`` world whose ranks take different roles (learner, vLLM engine;
:mod:`megatron_tulu.algorithms.roles`). Only the learner ranks form the default process group that
Megatron-Core sees; everything that crosses roles goes through what this module builds on the
launcher's own key-value store (the torchrun agent's ``TCPStore`` at ``MASTER_ADDR:MASTER_PORT``):

- :func:`connect_store` -- a client of that store (or, outside an agent, rank 0 hosts it), with a
  prefix per launcher restart so a restarted attempt never reads an old attempt's keys;
- :func:`host_address` -- the address other nodes reach this rank at (``MEGATRON_TULU_HOST``, else
  this host's address on the route to ``MASTER_ADDR``): never a hard-coded loopback;
- :func:`publish` / :func:`lookup` -- ports and addresses negotiated through the store;
- :class:`ControlChannel` -- pickled messages between any two ranks over a gloo group of the whole
  world that is *not* the default group (so Megatron never sees engine ranks);
- :class:`Watchdog` -- heartbeats in the store; a rank whose heartbeat stops (killed, hung node,
  launcher gone) ends every other rank within ``timeout_s`` with an ``error:`` line naming the rank
  and its role, and this process's helper processes (vLLM's engine core and workers) go with it.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from megatron_tulu.errors import UserError

__all__ = [
    "ControlChannel",
    "guard_process_group",
    "JobEnv",
    "Watchdog",
    "connect_store",
    "host_address",
    "job_env",
    "kill_descendants",
    "lookup",
    "publish",
    "reserve_port",
]


# A world of one only (its private store, its MASTER_ADDR when none is set): a job of several
# ranks must name MASTER_ADDR (torchrun does), and anything another process or host must reach
# takes its address from host_address().
LOCAL_ONLY = "127.0.0.1"


@dataclass(frozen=True)
class JobEnv:
    """What the launcher told this process (torchrun's environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int | None
    agent_store: bool  # torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE=True)
    restart_count: int


def job_env(env: Mapping[str, str] | None = None) -> JobEnv:
    """Read torchrun's variables; a plain ``python`` process is a world of one on node 0."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    rank = int(env.get("RANK", "0"))
    node = env.get("GROUP_RANK")  # torchrun: the node rank
    port = env.get("MASTER_PORT")
    master = env.get("MASTER_ADDR")
    if master is None:
        if world > 1:  # ranks on other hosts would each dial their own loopback and wait forever
            raise UserError(
                f"WORLD_SIZE={world} but MASTER_ADDR is not set: launch with torchrun (it sets "
                "MASTER_ADDR and MASTER_PORT) or set MASTER_ADDR to the address of rank 0's host"
            )
        master = LOCAL_ONLY
    return JobEnv(
        rank=rank,
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world_size=local_world,
        node_rank=int(node) if node is not None else rank // max(1, local_world),
        master_addr=master,
        master_port=int(port) if port else None,
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
        restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
    )


def host_address(
    job: JobEnv, env: Mapping[str, str] | None = None, route: Callable[[str], str | None] | None = None
) -> str:
    """The address other nodes use to reach this rank.

    ``MEGATRON_TULU_HOST`` wins (clusters with several interfaces); otherwise this host's address
    on the route to ``MASTER_ADDR`` (the launcher's store, which every node reaches), so the answer
    is an interface the other nodes share; this host's resolved name as a last resort. No node is
    assumed to be the store's host (torchrun's c10d rendezvous numbers nodes in join order)."""
    env = os.environ if env is None else env
    if env.get("MEGATRON_TULU_HOST"):
        return env["MEGATRON_TULU_HOST"]
    return (route or _address_towards)(job.master_addr) or _resolve_own_host()


def _address_towards(target: str) -> str | None:
    """This host's source address for packets to ``target`` (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def _resolve_own_host() -> str:
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name


def reserve_port(host: str = "") -> int:
    """A TCP port free on this host a moment ago (bound on all interfaces, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def connect_store(job: JobEnv, timeout_s: float = 300.0) -> dist.Store:
    """The job's key-value store: the torchrun agent's store when there is one (every rank a client);
    otherwise rank 0 hosts one at ``MASTER_ADDR:MASTER_PORT``; a world of one gets a private store."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if job.world_size == 1 and job.master_port is None:
        store: dist.Store = dist.TCPStore(LOCAL_ONLY, reserve_port(LOCAL_ONLY), 1, True, timeout=timeout)
    elif job.agent_store:
        store = dist.TCPStore(job.master_addr, job.master_port, None, False, timeout=timeout)
    else:
        if job.master_port is None:
            raise RuntimeError("WORLD_SIZE > 1 without MASTER_PORT: launch with torchrun")
        store = dist.TCPStore(
            job.master_addr,
            job.master_port,
            job.world_size,
            job.rank == 0,
            timeout=timeout,
            multi_tenant=True,
        )
    return dist.PrefixStore(f"megatron_tulu/attempt_{job.restart_count}/", store)


def publish(store: dist.Store, key: str, value: Any) -> None:
    store.set(key, pickle.dumps(value))


def lookup(store: dist.Store, key: str, timeout_s: float | None = None) -> Any:
    """Wait for ``key`` (up to ``timeout_s``) and return its value."""
    if timeout_s is not None:
        store.wait([key], datetime.timedelta(seconds=timeout_s))
    return pickle.loads(store.get(key))


class ControlChannel:
    """Pickled messages between ranks of the whole world, over a gloo group apart from the default one.

    Both ends must agree on the order of messages between a pair (one sender thread per pair and tag).
    Messages come only from ranks of the same job (not hostile input)."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, timeout_s: float):
        from torch.distributed import ProcessGroupGloo

        self.rank, self.world_size = rank, world_size
        self.pg = ProcessGroupGloo(
            dist.PrefixStore("control/", store), rank, world_size, datetime.timedelta(seconds=timeout_s)
        )

    def send(self, obj: Any, dst: int, tag: int = 0) -> None:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        header = torch.tensor([len(payload)], dtype=torch.int64)
        self.pg.send([header], dst, tag).wait()
        if payload:
            self.pg.send([torch.frombuffer(bytearray(payload), dtype=torch.uint8)], dst, tag).wait()

    def recv(self, src: int, tag: int = 0) -> Any:
        header = torch.zeros(1, dtype=torch.int64)
        self.pg.recv([header], src, tag).wait()
        buf = torch.empty(int(header.item()), dtype=torch.uint8)
        self.pg.recv([buf], src, tag).wait()
        return pickle.loads(buf.numpy().tobytes())

    def barrier(self) -> None:
        self.pg.barrier().wait()


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
    """Heartbeats through the job store; ends this process when a peer falls silent.

    Every ``interval_s`` this rank bumps ``heartbeat/<rank>`` and reads its peers'. A peer whose
    counter has not moved for ``timeout_s`` of *this* rank's clock (no clock agreement needed
    between nodes), or that posted ``failed/<rank>``, or a store that stopped answering (the
    launcher of node 0 is gone) ends this process: one ``error:`` line naming the rank(s) and their
    role, this process's children killed, exit code 1. A rank that finished cleanly calls
    :meth:`finish` so its silence afterwards is not a failure."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        peers: list[int],
        describe: Callable[[int], str],
        timeout_s: float,
        interval_s: float = 1.0,
        on_failure: Callable[[str], None] | None = None,
    ):
        self.store, self.rank, self.peers = store, rank, [p for p in peers if p != rank]
        self.describe, self.timeout_s, self.interval_s = describe, timeout_s, interval_s
        self.on_failure = on_failure or _fail_process
        self._stop = threading.Event()
        self._beats = 0
        self._beat()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._beats += 1
        self.store.set(f"heartbeat/{self.rank}", str(self._beats))

    def _run(self) -> None:
        seen: dict[int, tuple[bytes | None, float]] = {p: (None, time.monotonic()) for p in self.peers}
        first_failure: float | None = None
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
                now, silent, failed = time.monotonic(), [], []
                # once a peer reported a failure, a few missed beats are enough to call a peer dead
                limit = self.timeout_s if first_failure is None else 3 * self.interval_s
                for peer in self.peers:
                    if self.store.check([f"done/{peer}"]):
                        continue
                    if self.store.check([f"failed/{peer}"]):
                        failed.append((peer, self.store.get(f"failed/{peer}").decode(errors="replace")))
                        continue
                    key = f"heartbeat/{peer}"
                    value = self.store.get(key) if self.store.check([key]) else None
                    last, since = seen[peer]
                    if value != last:
                        seen[peer] = (value, now)
                    elif now - since > limit:
                        silent.append((peer, now - since))
            except Exception as exc:  # the store itself is gone: node 0's launcher exited
                if self._stop.is_set():
                    return
                self.on_failure(
                    f"the job store stopped answering ({type(exc).__name__}: {exc}); node 0's launcher is gone"
                )
                return
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
                self.on_failure("; ".join(parts))
                return

    def diagnose(self, wait_s: float | None = None) -> str:
        """Which peers look dead: those whose heartbeat does not move over ``wait_s`` (default 4
        beats) or that reported a failure. For the error line of a rank that fails because a peer
        died (a closed connection says nothing about who)."""
        wait_s = 4 * self.interval_s if wait_s is None else wait_s

        def beats() -> dict[int, bytes | None]:
            out = {}
            for p in self.peers:
                key = f"heartbeat/{p}"
                out[p] = self.store.get(key) if self.store.check([key]) else None
            return out

        try:
            before = beats()
            time.sleep(wait_s)
            after = beats()
            done = {p for p in self.peers if self.store.check([f"done/{p}"])}
            failed = {
                p: self.store.get(f"failed/{p}").decode(errors="replace")
                for p in self.peers
                if self.store.check([f"failed/{p}"])
            }
        except Exception:
            return "the job store stopped answering (node 0's launcher is gone)"
        silent = [p for p in self.peers if p not in done and p not in failed and before[p] == after[p]]
        parts = [f"rank {p} ({self.describe(p)}) silent (killed or hung)" for p in silent]
        parts += [f"rank {p} ({self.describe(p)}) failed: {why}" for p, why in failed.items()]
        return "; ".join(parts)

    def report_failure(self, reason: str) -> None:
        """Tell the peers this rank is failing (they stop at once instead of waiting for silence)."""
        try:
            self.store.set(f"failed/{self.rank}", reason[:500])
        except Exception:
            pass

    def finish(self) -> None:
        """This rank ended cleanly: stop watching and let peers know its silence is expected."""
        self._stop.set()
        try:
            self.store.set(f"done/{self.rank}", "1")
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
