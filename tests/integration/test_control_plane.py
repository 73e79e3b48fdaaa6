"""The control-plane benchmark as a test, small: 8 rank processes (two simulated nodes of 4), one
SIGKILLed; every survivor names it, nothing of the job is left, heartbeats cost about one store
request per rank per interval (the 16/64/256-rank figures are README's, from the same script)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_eight_ranks_one_killed(tmp_path):
    out = tmp_path / "cp.json"
    cmd = [
        sys.executable,
        "benchmarks/bench_control_plane.py",
        *("--ranks", "8", "--per-node", "4", "--interval", "0.5", "--heartbeat-timeout", "3"),
        *("--steady-s", "4", "--out", str(out)),
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["survivors_naming_victim"] == 7 and result["processes_left"] == 0
    assert result["store_requests_per_rank_per_interval"] <= 2.0
    assert result["detect_s"] <= 6.0 and result["cleanup_s"] <= 30
