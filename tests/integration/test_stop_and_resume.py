"""Stop for requeue on a real two-rank SFT run (TP2, gloo): SIGUSR1 delivered to rank 1 only after
step 3 -> both ranks agree at that step boundary, save the step-3 checkpoint (the run has no
periodic ones), rank 0 writes ``stopped_for_requeue`` and the job exits 0; the restart with
``checkpoint.resume=true`` (what the sbatch passes on a requeue) resumes from step 3 and ends with
the uninterrupted run's metrics and bit-identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _sft(out_dir, cache, *extra, fault=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    env.pop("MEGATRON_TULU_FAULT", None)
    if fault:
        env["MEGATRON_TULU_FAULT"] = fault
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "megatron_tulu.cli",
        "sft",
        f"train.output_dir={out_dir}",
        f"data.cache_dir={cache}",
        "parallel.tp=2",
        "train.train_iters=6",
        "train.seq_length=128",
        "train.global_batch_size=8",
        "train.micro_batch_size=4",
        "checkpoint.save_interval=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _comparable(rows):
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows]


def test_sigusr1_on_one_rank_checkpoints_exits_and_resumes_exactly(tmp_path):
    cache = tmp_path / "cache"
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = _sft(straight, cache)
    assert done.returncode == 0, done.stderr[-3000:]

    first = _sft(stopped, cache, "checkpoint.resume=auto", fault="sigusr1_after_step:3@1")
    assert first.returncode == 0, first.stderr[-3000:]
    marker = json.loads((stopped / "stopped_for_requeue").read_text())
    assert marker["step"] == 3 and marker["reason"] == "SIGUSR1", marker
    assert [r["step"] for r in _rows(stopped)] == [1, 2, 3]
    ckpts = sorted(p.name for p in (stopped / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_0000003"], ckpts
    assert not (stopped / "hf").exists()  # no final export: the run is not over

    resumed = _sft(stopped, cache, "checkpoint.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[resume] resuming from" in resumed.stdout and "step_0000003" in resumed.stdout
    assert not (stopped / "stopped_for_requeue").exists()  # this start finished: nothing to requeue
    assert _comparable(_rows(stopped)) == _comparable(_rows(straight))
    a = load_file(str(straight / "hf" / "model.safetensors"))
    b = load_file(str(stopped / "hf" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
