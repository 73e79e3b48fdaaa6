"""Stop for requeue on a real two-rank SFT run (TP2, gloo): SIGUSR1 delivered to rank 1 only after
step 3 -> both ranks agree at that step boundary, save the step-3 checkpoint (the run has no
periodic ones), rank 0 writes ``stopped_for_requeue`` and the job exits 0; the restart with
``checkpoint.resume=true`` (what the sbatch passes on a requeue) resumes from step 3 and ends with
the uninterrupted run's metrics and bit-identical weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import run_sft_tp2, sft_losses

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_sigusr1_on_one_rank_checkpoints_exits_and_resumes_exactly(tmp_path):
    cache = tmp_path / "cache"
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = run_sft_tp2(straight, cache, save_interval=0)
    assert done.returncode == 0, done.stderr[-3000:]

    first = run_sft_tp2(
        stopped, cache, "checkpoint.resume=auto", fault="sigusr1_after_step:3@1", save_interval=0
    )
    assert first.returncode == 0, first.stderr[-3000:]
    marker = json.loads((stopped / "stopped_for_requeue").read_text())
    assert marker["step"] == 3 and marker["reason"] == "SIGUSR1", marker
    assert [step for step, *_ in sft_losses(stopped)] == [1, 2, 3]
    ckpts = sorted(p.name for p in (stopped / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_0000003"], ckpts
    assert not (stopped / "hf").exists()  # no final export: the run is not over

    resumed = run_sft_tp2(stopped, cache, "checkpoint.resume=true", save_interval=0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[resume] resuming from" in resumed.stdout and "step_0000003" in resumed.stdout
    assert not (stopped / "stopped_for_requeue").exists()  # this start finished: nothing to requeue
    assert sft_losses(stopped) == sft_losses(straight)
    a = load_file(str(straight / "hf" / "model.safetensors"))
    b = load_file(str(stopped / "hf" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
