"""Shared test utilities: random HF Llama directories and a torchrun launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORKERS = REPO / "tests" / "distributed" / "workers"


def full_set_only(suite: str, why: str = "CI time budget") -> pytest.MarkDecorator:
    """Skip unless ``MEGATRON_TULU_FULL_<suite>=1``: a heavy test CI leaves to the full set (README
    "Tests" lists the commands)."""
    var = f"MEGATRON_TULU_FULL_{suite}"
    return pytest.mark.skipif(
        not os.environ.get(var), reason=f"full {suite.lower()} set only ({var}=1): {why}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What every process a test starts gets: one intra-op thread, no Python warnings, no Hub access; and
# where a vLLM CPU engine runs, VLLM_QUIET_ENV too (warnings only, a 1 GiB KV cache).
QUIET_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
VLLM_QUIET_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CPU_KVCACHE_SPACE": "1"}


def quiet_env(**extra: str) -> dict[str, str]:
    """This process's environment with :data:`QUIET_ENV` and ``extra``."""
    return {**os.environ, **QUIET_ENV, **extra}


def torchrun_cmd(nproc: int, *target: str) -> list[str]:
    """``torch.distributed.run`` with ``nproc`` ranks on a free port, then ``target`` (a script and its
    arguments, or ``-m module ...``)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *target,
    ]


def run_logged(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> int:
    """Run ``cmd`` from the repository root with its output in ``log`` (a file, not a pipe: vLLM
    children may linger); returns the exit code."""
    with open(log, "w") as handle:
        return subprocess.run(
            cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=timeout
        ).returncode


def run_torchrun(script: str | Path, nproc: int, args: list[str], timeout: int = 300) -> str:
    """Run ``script`` (or ``-m module``) under torchrun with ``nproc`` gloo ranks; return its output."""
    target = ["-m", str(script)[3:]] if str(script).startswith("-m ") else [str(script)]
    cmd = torchrun_cmd(nproc, *target, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=quiet_env(), cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


_WORKER_RESULTS: dict[tuple, Any] = {}


def worker_result(script: str | Path, nproc: int, args: list[str], out: Path) -> Any:
    """``torch.load`` of what ``script`` saved to ``--out`` under torchrun; run once per (script,
    processes, args) in this pytest process, so tests that need the same run share it."""
    key = (str(script), nproc, tuple(args))
    if key not in _WORKER_RESULTS:
        run_torchrun(script, nproc, [*args, "--out", str(out)])
        _WORKER_RESULTS[key] = torch.load(out)
    return _WORKER_RESULTS[key]


def make_hf_llama(
    out: Path,
    *,
    vocab: int = 301,
    tied: bool = False,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    layers: int = 4,
    seed: int = 0,
) -> Path:
    """A random fp32 HF Llama 3.1-style model (odd vocab, GQA, llama3 RoPE scaling)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # norms away from 1 so a mapping mistake on them shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    return out


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def run_sft_tp2(out_dir: Path, cache: Path, *extra: str, fault: str | None = None, save_interval: int = 2):
    """A short two-rank TP2 SFT run under torchrun (6 steps of 8 x 128 tokens); ``fault`` goes to
    ``MEGATRON_TULU_FAULT`` (one set outside the test never leaks in). Returns the finished process."""
    import subprocess

    env = quiet_env()
    env.pop("MEGATRON_TULU_FAULT", None)
    if fault:
        env["MEGATRON_TULU_FAULT"] = fault
    cmd = [
        *torchrun_cmd(2, "-m", "megatron_tulu.cli", "sft"),
        f"train.output_dir={out_dir}",
        f"data.cache_dir={cache}",
        "parallel.tp=2",
        "train.train_iters=6",
        "train.seq_length=128",
        "train.global_batch_size=8",
        "train.micro_batch_size=4",
        f"checkpoint.save_interval={save_interval}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def sft_losses(out_dir: Path) -> list[tuple]:
    """(step, loss, lr, grad_norm) of every row of a run's metrics.jsonl."""
    import json

    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows]
