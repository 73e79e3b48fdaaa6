"""Issue 14 case 3: helper processes die with their parent under ``kill -9``.

Each scenario runs a small parent script in its own session, waits until it reports its helpers,
SIGKILLs the parent only, and lists what is left of the session. The control case (no hygiene)
shows the check can fail: a plainly forked child survives its parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.helpers import REPO, free_port

FORK_CHILD = """
import multiprocessing as mp, os, sys, time
if {install}:
    from megatron_tulu.engine import hygiene
    hygiene.install()
def sleeper():
    time.sleep(120)
if __name__ == "__main__":
    child = mp.get_context("fork").Process(target=sleeper)
    child.start()
    print("ready", child.pid, flush=True)
    time.sleep(120)
"""

CHECKPOINT_MANAGER = """
import time
from megatron_tulu.engine import hygiene
if __name__ == "__main__":
    hygiene.own_checkpoint_manager()
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    q = filesystem_async._get_write_results_queue()  # megatron's own accessor: our manager's queue
    q.put(1)
    assert q.get() == 1
    import multiprocessing as mp
    from multiprocessing import resource_tracker
    lock_queue = mp.get_context("fork").Queue()  # a SemLock: starts the resource tracker, as the writers do
    print("ready", hygiene._manager._process.pid, resource_tracker._resource_tracker._pid, flush=True)
    time.sleep(120)
"""

SANDBOX = """
import time
from megatron_tulu.rewards.sandbox import run_with_time_limit, _live_workers
def spin():
    while True:
        pass
if __name__ == "__main__":
    import threading
    def call():
        try:
            run_with_time_limit(spin, time_limit=120)
        except Exception:
            pass
    threading.Thread(target=call, daemon=True).start()
    while not _live_workers:
        time.sleep(0.05)
    print("ready", next(iter(_live_workers)).pid, flush=True)
    time.sleep(120)
"""


def _session(sid: int) -> list[int]:
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    with open(f"/proc/{entry}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            left.append(int(entry))
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                pass
    return left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_parent_and_list_survivors(script: str, wait: float = 10) -> tuple[list[int], list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", line
        helpers = [int(pid) for pid in line[1:]]
        assert set(helpers) <= set(_session(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + wait
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return helpers, _session(proc.pid)
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_control_a_plain_forked_child_outlives_a_killed_parent():
    helpers, left = _kill_parent_and_list_survivors(FORK_CHILD.format(install=False), wait=2)
    assert helpers[0] in left


def test_forked_children_die_with_the_parent():
    _, left = _kill_parent_and_list_survivors(FORK_CHILD.format(install=True))
    assert left == []


def test_dist_checkpointing_manager_and_resource_tracker_die_with_the_parent():
    helpers, left = _kill_parent_and_list_survivors(CHECKPOINT_MANAGER)
    assert len(helpers) == 2  # the manager and the resource tracker were alive before the kill
    assert left == []


def test_busy_sandbox_worker_dies_with_the_parent():
    _, left = _kill_parent_and_list_survivors(SANDBOX)
    assert left == []


TORCHRUN_RANK = """
import os, time
from megatron_tulu.cli import _setup_process
_setup_process()
print("ready", os.getpid(), flush=True)
time.sleep(120)
"""


def test_torchrun_ranks_die_with_a_killed_launcher(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(TORCHRUN_RANK)
    # SIGKILL torchrun itself, the rank's parent: the rank must not live on with ppid 1.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=1",
            f"--master_port={free_port()}",
            str(script),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
    )
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", line
        rank = int(line[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # torchrun starts each rank in a session of its own: follow the rank's pid, not our session.
        deadline = time.monotonic() + 10
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.1)
        survived = _alive(rank)
        if survived:
            os.kill(rank, signal.SIGKILL)
        assert not survived
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)
