"""The job plumbing across roles: torchrun's environment, addresses, the control channel, liveness."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch.distributed as dist

from benchmarks.bench_control_plane import CountingStore
from megatron_tulu.engine.control import ChannelClosed, ControlChannel
from megatron_tulu.engine.job import DriverGate, job_env, lookup
from megatron_tulu.engine.liveness import Watchdog, monitor_ranks
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
    if mode in ("echo", "closed"):
        channel = ControlChannel(store, rank, world, "127.0.0.1")
        if mode == "closed":  # rank 1 dies without a word; the driver's wait ends naming it
            if rank == 1:
                os._exit(0)
            try:
                channel.recv(1)
            except ChannelClosed as exc:
                queue.put(str(exc))
            return
        if rank == 1:
            msg = channel.recv(0)
            channel.send(("tag 5 first", None), 0, tag=5)
            channel.send(("echo", msg), 0)
        else:
            channel.send({"prompts": [[1, 2, 3]], "big": b"x" * 300_000}, 1)
            echo = channel.recv(1)  # the tag-5 frame arrived first: it is queued, not returned
            queue.put((echo, channel.recv(1, tag=5)))
        return
    # watchdog: rank 1 beats a few times then dies without a word; rank 0 must notice and name it
    found = []
    dog = Watchdog(
        store,
        rank,
        list(range(world)),
        describe=lambda r: f"engine 0 tp-rank {r - 1}",
        timeout_s=3.0,
        interval_s=0.2,
        on_failure=found.append,
        monitor=rank in monitor_ranks(world, world),
    )
    if rank == 1:
        time.sleep(1.0)
        os._exit(0)  # killed: no finish(), no report
    deadline = time.monotonic() + 30
    while not found and time.monotonic() < deadline:
        time.sleep(0.1)
    dog.stop()
    queue.put(found)


@pytest.mark.parametrize("mode", ["echo", "closed", "watchdog"])
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
        (tag, msg), first = result
        assert tag == "echo" and msg["prompts"] == [[1, 2, 3]] and msg["big"] == b"x" * 300_000
        assert first == ("tag 5 first", None)
    elif mode == "closed":
        assert "rank 1's control connection closed" in result
    else:
        assert len(result) == 1
        assert "rank 1 (engine 0 tp-rank 0)" in result[0] and "silent" in result[0]


def test_idle_recv_outlives_any_group_timeout_and_stops_on_the_verdict():
    """An idle rank waits as long as needed (no collective timeout) and stops once alive() raises."""
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    driver = ControlChannel(store, 0, 2, "127.0.0.1")
    verdict: list[str] = []

    def alive():
        if verdict:
            raise RuntimeError(verdict[0])

    idle = ControlChannel(store, 1, 2, "127.0.0.1", alive=alive)
    driver.send("hello", 1)
    assert idle.recv(0) == "hello"
    with pytest.raises(ChannelClosed, match="gave up waiting"):
        idle.recv(0, timeout_s=2.5)  # several 1 s slices of silence, then its own deadline only
    verdict.append("rank 7 silent")
    with pytest.raises(RuntimeError, match="rank 7 silent"):
        idle.recv(0)
    idle.world_size = 3  # a third rank: ranks other than the driver have no line between them
    with pytest.raises(ValueError, match="to the driver only"):
        idle.send("x", 2)
    driver.close()
    idle.close()


def test_watchdog_costs_one_request_per_beat_and_monitors_one_more():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    world = list(range(8))
    counting = {r: CountingStore(store) for r in world}
    dogs = [
        Watchdog(
            counting[r],
            r,
            world,
            describe=str,
            timeout_s=30,
            interval_s=0.1,
            on_failure=pytest.fail,
            monitor=r in monitor_ranks(8, 4),
        )
        for r in world
    ]
    for c in counting.values():
        c.requests = 0
    time.sleep(2.0)
    for d in dogs:
        d.finish()
    beats = 2.0 / 0.1
    per_rank = {r: counting[r].requests / beats for r in world}
    assert monitor_ranks(8, 4) == [0, 4]
    for r in world:  # one compare_set per beat; a monitor adds one multi_get (the check at start)
        expected = 2 if r in (0, 4) else 1
        assert expected * 0.7 <= per_rank[r] <= expected + 0.2, per_rank


def test_a_monitor_tells_every_rank_which_rank_died():
    """Rank 3 goes silent; only rank 0 monitors; the verdict reaches ranks 1 and 2 through their own
    heartbeat keys (no extra request) and names rank 3 everywhere."""
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    found: dict[int, list[str]] = {r: [] for r in range(4)}
    dogs = {
        r: Watchdog(
            store,
            r,
            [0, 1, 2, 3],
            describe=lambda p: f"engine rank {p}",
            timeout_s=1.0,
            interval_s=0.1,
            on_failure=found[r].append,
            monitor=r == 0,
        )
        for r in range(4)
    }
    dogs[3].stop()  # silent from now on
    deadline = time.monotonic() + 10
    while not all(found[r] for r in (0, 1, 2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for r in (0, 1, 2):
        assert found[r] and "rank 3 (engine rank 3) silent" in found[r][0], found
        with pytest.raises(RuntimeError, match="rank 3"):
            dogs[r].check()


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
    store.set("live/1", "failed:RuntimeError: boom")
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        time.sleep(0.05)
    dog.stop()
    assert found and "rank 1 (learner 1) failed: RuntimeError: boom" in found[0]
    assert store.get("live/0").startswith(b"verdict:rank 1")  # every live rank's key holds the verdict


def test_diagnose_names_the_silent_and_the_failed_peers():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    dog = Watchdog(
        store, 0, [0, 1, 2, 3], describe=lambda r: f"role {r}", timeout_s=60, interval_s=0.1, on_failure=print
    )
    dog.stop()  # only diagnose() is exercised here
    store.set("live/1", "7")  # rank 1: no beat during the wait (dead)
    store.set("live/2", "failed:SystemExit")  # rank 2: reported its failure
    store.set("live/3", "done")  # rank 3: finished cleanly
    found = dog.diagnose(wait_s=0.3)
    assert found == "rank 1 (role 1) silent (killed or hung); rank 2 (role 2) failed: SystemExit"


def test_driver_gate_holds_the_others_until_the_driver_opens_it():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    driver, other = DriverGate(store, True), DriverGate(store, False, poll_s=0.05)
    import threading

    passed = threading.Event()
    t = threading.Thread(target=lambda: (other.passage(), passed.set()))
    t.start()
    assert not passed.wait(0.5)  # the driver has not opened it
    driver.passage()
    assert passed.wait(5)
    t.join()
    stopped = DriverGate(store, False, alive=lambda: (_ for _ in ()).throw(RuntimeError("verdict")))
    stopped.passed = 5
    with pytest.raises(RuntimeError, match="verdict"):
        stopped.passage()


def test_lookup_waits_in_slices_and_only_a_caller_bound_ends_it():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    with pytest.raises(TimeoutError, match="'engine/0/master'"):
        lookup(store, "engine/0/master", timeout_s=0.3, poll_s=0.05)
