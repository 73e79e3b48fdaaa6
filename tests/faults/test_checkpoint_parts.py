"""Multi-model checkpoints (the RL trainer's policy + value + both optimizers): saved in one commit,
loaded back bit for bit, and a kill between the parts leaves the previous checkpoint as latest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from megatron_tulu.engine.checkpoint import checkpoint_problems, find_latest, read_meta
from tests.helpers import REPO

pytestmark = [pytest.mark.slow]

WORKER = REPO / "tests" / "faults" / "workers" / "parts_worker.py"


def _worker(*args, fault=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
    if fault:
        env["MEGATRON_TULU_FAULT"] = fault
    return subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_parts_roundtrip_and_kill_between_parts(tmp_path):
    root = tmp_path / "ckpt"
    saved = _worker("save", root, 1, tmp_path / "saved.pt")
    assert saved.returncode == 0, saved.stderr[-3000:]
    first = find_latest(root)
    assert first is not None and read_meta(first)["parts"] == ["policy", "value"]
    assert checkpoint_problems(first, collective=False) == []

    loaded = _worker("load", root, tmp_path / "loaded.pt")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    a, b = torch.load(tmp_path / "saved.pt"), torch.load(tmp_path / "loaded.pt")
    assert b["extra"] == {"pending": [1, "rollouts"], "step": 1}
    for part in ("policy", "value"):
        assert a[part].keys() == b[part].keys()
        assert any(k.startswith("opt/") for k in a[part])  # Adam moments are part of the comparison
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)

    crashed = _worker("save", root, 2, tmp_path / "saved2.pt", fault="crash_between_parts:2")
    assert crashed.returncode != 0
    assert (root / "step_0000002.partial" / "policy").is_dir()  # the policy part was written ...
    assert find_latest(root) == first  # ... but nothing of step 2 is visible
