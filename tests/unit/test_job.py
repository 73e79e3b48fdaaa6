"""The job plumbing across roles: torchrun's environment, addresses, the control channel, liveness."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch.distributed as dist

from megatron_tulu.engine.job import ControlChannel, Watchdog, host_address, job_env, publish
from megatron_tulu.rollout.fleet import EnginePlacement, split_evenly
from tests.helpers import free_port


def test_job_env_reads_torchrun_variables():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "MASTER_ADDR": "node0.cluster",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "2",
    }
    job = job_env(env)
    assert (job.rank, job.world_size, job.local_rank, job.local_world_size, job.node_rank) == (5, 8, 1, 4, 1)
    assert (job.master_addr, job.master_port, job.agent_store, job.restart_count) == (
        "node0.cluster",
        29500,
        True,
        2,
    )
    plain = job_env({})
    assert (plain.rank, plain.world_size, plain.node_rank, plain.master_port, plain.agent_store) == (
        0,
        1,
        0,
        None,
        False,
    )


def test_several_ranks_without_master_addr_are_refused_not_sent_to_loopback():
    from megatron_tulu.errors import UserError

    with pytest.raises(UserError, match="WORLD_SIZE=2 but MASTER_ADDR is not set"):
        job_env({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"})
    assert job_env({"MASTER_PORT": "29500"}).master_addr == "127.0.0.1"  # a world of one


def test_host_address_never_assumes_loopback():
    job = job_env(
        {"GROUP_RANK": "1", "MASTER_ADDR": "node0.cluster", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}
    )
    routes = {"node0.cluster": "10.0.0.9"}
    # the interface this host uses towards the launcher's store (reachable from every node)
    assert host_address(job, env={}, route=routes.get) == "10.0.0.9"
    # an explicit interface wins
    assert host_address(job, env={"MEGATRON_TULU_HOST": "10.1.2.3"}, route=routes.get) == "10.1.2.3"
    # simulated nodes on one machine: towards 127.0.0.1 the route is loopback itself
    local = job_env({"MASTER_ADDR": "127.0.0.1"})
    assert host_address(local, env={}) == "127.0.0.1"


def test_split_evenly_covers_every_prompt_once_in_order():
    for n in (0, 1, 7, 8, 100):
        for parts in (1, 2, 3, 8):
            ranges = split_evenly(n, parts)
            assert len(ranges) == parts
            assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_engine_placement_node_hosts():
    # a TP16 engine over nodes 30 and 31 (8 ranks each): one vLLM host process per node
    p = EnginePlacement(0, tuple(range(240, 256)), tuple([30] * 8 + [31] * 8))
    assert p.leader == 240 and p.node_list == [30, 31]
    assert p.node_host(30) == 240 and p.node_host(31) == 248
    assert p.local_ranks_on(31, 8) == list(range(8))


def _peer(port: int, rank: int, world: int, mode: str, queue) -> None:
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0)
    channel = ControlChannel(store, rank, world, timeout_s=60)
    if mode == "echo":
        if rank == 1:
            msg = channel.recv(0)
            channel.send(("echo", msg), 0)
        else:
            channel.send({"prompts": [[1, 2, 3]], "big": b"x" * 300_000}, 1)
            queue.put(channel.recv(1))
        return
    # watchdog: rank 1 beats twice then dies without a word; rank 0 must notice and name it
    found = []
    dog = Watchdog(
        store,
        rank,
        list(range(world)),
        describe=lambda r: f"engine 0 tp-rank {r - 1}",
        timeout_s=3.0,
        interval_s=0.2,
        on_failure=found.append,
    )
    if rank == 1:
        time.sleep(1.0)
        os._exit(0)  # killed: no finish(), no report
    deadline = time.monotonic() + 30
    while not found and time.monotonic() < deadline:
        time.sleep(0.1)
    dog.stop()
    queue.put(found)


@pytest.mark.parametrize("mode", ["echo", "watchdog"])
def test_control_channel_and_watchdog_between_processes(mode):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_peer, args=(port, r, 2, mode, queue)) for r in range(2)]
    for p in procs:
        p.start()
    result = queue.get(timeout=60)
    for p in procs:
        p.join(30)
    if mode == "echo":
        tag, msg = result
        assert tag == "echo" and msg["prompts"] == [[1, 2, 3]] and msg["big"] == b"x" * 300_000
    else:
        assert len(result) == 1
        assert "rank 1 (engine 0 tp-rank 0)" in result[0] and "silent" in result[0]


def test_watchdog_failure_report_names_the_rank_at_once():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    found = []
    dog = Watchdog(
        store,
        0,
        [0, 1],
        describe=lambda r: f"learner {r}",
        timeout_s=60,
        interval_s=0.1,
        on_failure=found.append,
    )
    publish(store, "heartbeat/1", "1")
    store.set("failed/1", "RuntimeError: boom")
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        time.sleep(0.05)
    dog.stop()
    assert found and "rank 1 (learner 1) failed: RuntimeError: boom" in found[0]
    assert int(store.get("heartbeat/0")) >= 1


def test_diagnose_names_the_silent_and_the_failed_peers():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    dog = Watchdog(
        store, 0, [0, 1, 2, 3], describe=lambda r: f"role {r}", timeout_s=60, interval_s=0.1, on_failure=print
    )
    dog.stop()  # only diagnose() is exercised here
    store.set("heartbeat/1", "7")  # rank 1: no beat during the wait (dead)
    store.set("failed/2", "SystemExit")  # rank 2: reported its failure
    store.set("done/3", "1")  # rank 3: finished cleanly
    found = dog.diagnose(wait_s=0.3)
    assert found == "rank 1 (role 1) silent (killed or hung); rank 2 (role 2) failed: SystemExit"
