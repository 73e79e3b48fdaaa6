"""Liveness comes from heartbeats, not collective timeouts (two simulated nodes: learners TP2 on node 0,
one TP2 vLLM engine on node 1, ``parallel.distributed_timeout_minutes=1``).

Before, ranks with nothing to do (the engine's TP rank 1, which only holds its place while vLLM's
worker runs) waited for their next command in a gloo ``recv`` bounded by that timeout, and the driver's
first command to an engine still loading timed out the same way: this run died after ~80 s. Now every
wait whose length depends on the work polls, so:

- 12 steps (longer than the 1-minute group timeout) end with rc 0 on both launches;
- a SIGKILLed idle engine rank is named by every other rank within the heartbeat timeout
  (``rollout.heartbeat_timeout_s``, 20 s in the preset), and nothing of the job is left.

Both run with ``MEGATRON_TULU_FULL_LIVENESS=1`` (several minutes each on two cores).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import full_set_only
from tests.multinode import launch_nodes, metrics

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.distributed, full_set_only("LIVENESS")]

ARGS = ["preset=rlvr_tiny_2node", "parallel.distributed_timeout_minutes=1"]
HEARTBEAT_TIMEOUT = 20


def test_twelve_steps_outlive_a_one_minute_group_timeout(tmp_path):
    started = time.monotonic()
    job = launch_nodes(tmp_path / "run", 2, 2, [*ARGS, "rlvr.total_episodes=96"])
    assert job.wait(1200) == [0, 0], job.log_text()[-5000:]
    took = time.monotonic() - started
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(13))
    assert all(r["refit_bytes_over_shard_max"] == 1.0 for r in rows[1:])
    assert took > 90, f"{took:.0f} s: not longer than the group timeout, proves nothing"
    print(f"12 steps with a 1-minute group timeout: rc 0 on both launches after {took:.0f} s")
    assert job.leftovers() == []


def test_idle_engine_rank_killed_is_named_within_the_heartbeat_timeout(tmp_path):
    out = tmp_path / "run"
    job = launch_nodes(out, 2, 2, [*ARGS, "rlvr.total_episodes=96"])
    deadline = time.monotonic() + 900
    while len(metrics(out)) < 3:  # mid-run: steps 0-2 logged
        assert time.monotonic() < deadline and all(p.poll() is None for p in job.procs), job.log_text()[
            -5000:
        ]
        job.track()
        time.sleep(0.5)
    job.track()
    pid = job.rank_pid(3)  # engine 0's TP rank 1: no command ever reaches it but "stop"
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    codes = job.wait(HEARTBEAT_TIMEOUT + 120)
    took = time.monotonic() - killed
    assert None not in codes and any(c != 0 for c in codes), codes
    assert took < HEARTBEAT_TIMEOUT + 45, f"the job ended {took:.0f} s after the kill"
    text = job.log_text()
    named = [
        line
        for line in text.splitlines()
        if "error:" in line and "rank 3 (engine 0 tp-rank 1 on node 1)" in line
    ]
    assert len(named) >= 2, text[-5000:]  # the driver and the engine leader at least
    print(f"job ended {took:.1f} s after the kill; {len(named)} error lines name rank 3, e.g.:\n{named[0]}")
    assert job.leftovers() == [], "processes of the killed job are still alive"
