"""Faults in the production topology (two simulated nodes: learners TP2 on node 0, one TP2 vLLM engine
on node 1): kill -9 of an engine rank or a learner rank mid-run ends the whole job non-zero within
``rollout.refit_timeout_s``, names the dead rank and its role, leaves no process of the job alive, and
a resume from the last checkpoint reproduces the uninterrupted run's metrics.

CI kills the engine leader (the rank that owns vLLM's engine core and workers); the learner kill runs
with ``MEGATRON_TULU_FULL_FAULTS=1`` (both take ~5 minutes on two cores).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import full_set_only
from tests.multinode import comparable, launch_nodes, metrics, tiny_sources

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.distributed]

REFIT_TIMEOUT = 60
ARGS = [
    "preset=rlvr_tiny_2node",
    "rlvr.total_episodes=40",  # 5 steps, a checkpoint after each
    f"rollout.refit_timeout_s={REFIT_TIMEOUT}",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    tiny, heldout = tiny_sources(root)  # a short step-0 evaluation
    args = [*ARGS, f"model.hf_path={tiny}", f"rlvr.heldout_files=[{heldout}]"]
    job = launch_nodes(root / "straight", 2, 2, args)
    assert job.wait(600) == [0, 0], job.log_text()[-5000:]
    rows = metrics(root / "straight")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    return args, rows


def _kill_mid_run_then_resume(straight, tmp_path, victim: int, role: str, fault: str | None = None):
    """``fault``: the victim kills itself at that crash point (MEGATRON_TULU_FAULT=fault@victim);
    without one the test SIGKILLs it once steps 0-2 are logged."""
    args, reference = straight
    out = tmp_path / "crashed"
    job = launch_nodes(out, 2, 2, args, env={"MEGATRON_TULU_FAULT": f"{fault}@{victim}"} if fault else None)
    deadline = time.monotonic() + 600
    if fault is None:
        while len(metrics(out)) < 3:  # steps 0-2 logged: mid-run, between checkpoints 2 and 3
            assert time.monotonic() < deadline and all(p.poll() is None for p in job.procs), job.log_text()[
                -5000:
            ]
            job.track()
            time.sleep(0.5)
        job.track()
        pid = job.rank_pid(victim)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    else:  # wait for the victim to start, then to be gone
        seen = False
        while not any(p.poll() is not None for p in job.procs):
            assert time.monotonic() < deadline, job.log_text()[-5000:]
            job.track()
            alive = job.rank_pid(victim) is not None
            if seen and not alive:
                break
            seen = seen or alive
            time.sleep(0.2)
    killed_at = time.monotonic()
    codes = job.wait(REFIT_TIMEOUT + 90)
    took = time.monotonic() - killed_at
    assert None not in codes, f"job still running {took:.0f} s after the kill"
    assert any(c != 0 for c in codes), codes
    # ends within the liveness timeout (plus process teardown), with the dead rank named
    assert took < REFIT_TIMEOUT + 60, took
    text = job.log_text()
    assert f"rank {victim} ({role}" in text, text[-5000:]
    assert job.leftovers() == [], "processes of the killed job are still alive"
    saved = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if "." not in p.name)
    assert saved >= 1  # the kill may land before or during the save of step 2

    resumed = launch_nodes(out, 2, 2, [*args, "checkpoint.resume=true"])
    assert resumed.wait(600) == [0, 0], resumed.log_text()[-5000:]
    assert resumed.leftovers() == []
    assert comparable(metrics(out)) == comparable(reference)


def test_kill9_engine_leader_mid_run(straight, tmp_path):
    _kill_mid_run_then_resume(straight, tmp_path, victim=2, role="engine 0 tp-rank 0 on node 1")


@full_set_only("FAULTS")
def test_kill9_learner_rank_mid_run(straight, tmp_path):
    _kill_mid_run_then_resume(straight, tmp_path, victim=1, role="learner tp1 pp0 dp0 on node 0")


@full_set_only("FAULTS")
def test_learner_killed_in_a_refit(straight, tmp_path):
    """A learner dies as it starts streaming its shards after update 2: the engines are blocked in
    the transfer, and the job still ends naming it, leaves nothing behind and resumes exactly."""
    _kill_mid_run_then_resume(
        straight, tmp_path, victim=1, role="learner tp1 pp0 dp0 on node 0", fault="kill_in_refit:2"
    )
