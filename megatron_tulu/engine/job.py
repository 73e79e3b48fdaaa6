"""One ``torchrun`` world split into roles: the launcher's environment and its key-value store.

An RLVR job is a single ``torchrun`` world whose ranks take different roles (learner, vLLM engine;
:mod:`megatron_tulu.algorithms.roles`). Only the learner ranks form the default process group that
Megatron-Core sees; everything that crosses roles goes through the launcher's own key-value store
(the torchrun agent's ``TCPStore`` at ``MASTER_ADDR:MASTER_PORT``) and what is built on it:

- :func:`job_env` -- what the launcher said (ranks, node, store address, restarts);
- :func:`connect_store` -- a client of that store (or, outside an agent, rank 0 hosts it), with a
  prefix per launcher restart so a restarted attempt never reads an old attempt's keys;
- :func:`publish` / :func:`lookup` -- addresses and ports negotiated through the store; ``lookup``
  waits in short slices, as long as the work behind the key takes;
- :class:`DriverGate` -- learner ranks wait for the driver's go in short slices before a collective
  whose length depends on the driver's work (a generation, an evaluation), so that collective only
  ever lasts as long as the transfer itself;
- elsewhere: :mod:`~megatron_tulu.engine.network` (this node's address, ports),
  :mod:`~megatron_tulu.engine.control` (the driver's control channel) and
  :mod:`~megatron_tulu.engine.liveness` (heartbeats, process guards).
"""

from __future__ import annotations

import datetime
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from megatron_tulu.errors import UserError

__all__ = [
    "DriverGate",
    "JobEnv",
    "connect_store",
    "job_env",
    "lookup",
    "publish",
]


# A world of one only (its private store, its MASTER_ADDR when none is set): a job of several
# ranks must name MASTER_ADDR (torchrun does), and anything another process or host must reach
# takes its address from :func:`megatron_tulu.engine.network.configure_node_network`.
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

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


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


def connect_store(job: JobEnv, timeout_s: float = 300.0) -> dist.Store:
    """The job's key-value store: the torchrun agent's store when there is one (every rank a client);
    otherwise rank 0 hosts one at ``MASTER_ADDR:MASTER_PORT``; a world of one gets a private store."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if job.world_size == 1 and job.master_port is None:
        store: dist.Store = dist.TCPStore(LOCAL_ONLY, 0, 1, True, timeout=timeout)
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


def lookup(
    store: dist.Store,
    key: str,
    timeout_s: float | None = None,
    alive: Callable[[], None] | None = None,
    poll_s: float = 0.5,
) -> Any:
    """Wait for ``key`` and return its value. The wait polls (one small request per ``poll_s``) and
    calls ``alive()`` between polls, so it lasts as long as whatever publishes the key takes (an
    engine start, a model load) and never trips a store or collective timeout; ``timeout_s`` bounds
    it only where a caller wants a bound."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not store.check([key]):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no '{key}' in the job store after {timeout_s:.0f} s")
        if alive is not None:
            alive()
        time.sleep(poll_s)
    return pickle.loads(store.get(key))


class DriverGate:
    """Learner ranks pass the gate together, the driver (learner rank 0) opening it.

    Every learner calls :meth:`passage` before the same collective; the driver's call opens it (one
    store counter), the others poll the counter every ``poll_s`` (one request each) until it is
    open, calling ``alive()`` between polls. A collective that follows the gate starts only when the
    driver has its data, so its length is the transfer's, whatever the driver's work took."""

    KEY = "gate/driver"

    def __init__(
        self, store: dist.Store, is_driver: bool, alive: Callable[[], None] | None = None, poll_s: float = 0.5
    ):
        self.store, self.is_driver, self.alive, self.poll_s = store, is_driver, alive, poll_s
        self.passed = 0

    def passage(self) -> None:
        self.passed += 1
        if self.is_driver:
            self.store.add(self.KEY, 1)
            return
        while self.store.add(self.KEY, 0) < self.passed:
            if self.alive is not None:
                self.alive()
            time.sleep(self.poll_s)
