"""A process that started a vLLM engine is SIGKILLed: the engine core and its workers go with it
(the ``vllm.general_plugins`` entry point of this package asks the kernel for a parent-death signal
in the engine core; before it, the core and its workers lived on holding their memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO
from tests.multinode import in_sessions

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

OWNER = """
import sys, time
from megatron_tulu.rollout.engine import RolloutEngine
engine = RolloutEngine(sys.argv[1], dtype="float32", max_model_len=256, kv_cache_bytes=256 << 20)
print("ready", flush=True)
time.sleep(600)
"""


def test_engine_processes_die_with_a_sigkilled_owner(tmp_path):
    tiny = tmp_path / "tiny"
    subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(tiny)], check=True, cwd=REPO
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tiny)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its session holds everything it started
    )
    try:
        for line in owner.stdout:  # vLLM logs to stdout too
            if line.strip() == "ready":
                break
        assert owner.poll() is None
        started = in_sessions({owner.pid})
        assert len(started) >= 2, started  # the owner and at least vLLM's engine core
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(30)
        deadline = time.monotonic() + 30
        while in_sessions({owner.pid}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert in_sessions({owner.pid}) == []
    finally:
        for pid in in_sessions({owner.pid}):
            os.kill(pid, signal.SIGKILL)
