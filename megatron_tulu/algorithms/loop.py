"""Pieces every trainer loop shares: model init, deterministic batch order, metrics, resume, MFU."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_tulu.algorithms.memory import count_params
from megatron_tulu.config.schema import LoggingConfig, ModelConfig, RunConfig


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank0_first(load):
    """Run ``load()`` on rank 0, then on the other ranks, so they hit the cache rank 0 filled."""
    result = load() if is_rank0() else None
    barrier()
    return result if is_rank0() else load()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ensure_model_source(cfg: RunConfig) -> str:
    """The HF directory to initialise from; the embedded tiny model is built on first use."""
    if cfg.model.hf_path:
        return cfg.model.hf_path
    if cfg.model.name != "tiny":
        raise ValueError(f"model '{cfg.model.name}' needs model.hf_path (a local HF Llama directory)")
    path = Path(cfg.train.output_dir) / "tiny_init"
    # Called before torch.distributed exists (the model config decides the layout checks), so
    # rank 0 builds and the other torchrun ranks wait for the atomically renamed directory.
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    if rank == 0 and not (path / "config.json").is_file():
        from megatron_tulu.models.tiny import build_tiny_model

        build_tiny_model(path, seed=cfg.train.seed)
    deadline = time.monotonic() + 600
    while not (path / "config.json").is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: {path} was not built by rank 0 within 600 s")
        time.sleep(0.2)
    barrier()
    return str(path)


class BatchOrder:
    """Which dataset rows form global batch ``step``: a seeded permutation per epoch.

    A pure function of (seed, epoch, step), so a resumed run sees exactly the batches the
    uninterrupted run would have seen, whatever the checkpoint interval.
    """

    def __init__(self, num_rows: int, global_batch: int, seed: int, drop_last: bool = True):
        if num_rows < global_batch:
            raise ValueError(f"dataset has {num_rows} rows, fewer than one global batch ({global_batch})")
        self.num_rows, self.global_batch, self.seed = num_rows, global_batch, seed
        self.steps_per_epoch = num_rows // global_batch if drop_last else -(-num_rows // global_batch)

    def rows(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
        return perm[within * self.global_batch : (within + 1) * self.global_batch].tolist()


def split_for_rank(rows: list[int], dp: int, dp_rank: int, micro_batch: int) -> list[list[int]]:
    """This DP rank's contiguous share of a global batch, cut into micro-batches."""
    per_rank = len(rows) // dp
    mine = rows[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    return [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]


def check_batch_geometry(global_batch: int, micro_batch: int, dp: int) -> int:
    """Number of micro-batches per step; refuses splits that do not tile the global batch."""
    if global_batch % (micro_batch * dp):
        raise ValueError(
            f"train.global_batch_size={global_batch} is not divisible by micro_batch_size*dp = "
            f"{micro_batch}*{dp}; change train.global_batch_size or train.micro_batch_size"
        )
    return global_batch // (micro_batch * dp)


def train_flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
    """6N for the dense matmuls plus causal attention (forward+backward)."""
    attn = 6 * model_cfg.num_layers * model_cfg.num_attention_heads * model_cfg.kv_channels * seq_len
    return 6 * count_params(model_cfg) + attn


class MetricsLogger:
    """JSONL + TensorBoard on rank 0. On resume, JSONL entries after the resumed step are dropped;
    a fresh run (``resume_step == 0``) starts an empty file rather than appending to an old run's."""

    def __init__(self, out_dir: str | os.PathLike, cfg: LoggingConfig, resume_step: int = 0):
        self.enabled = is_rank0()
        self.path = Path(out_dir) / "metrics.jsonl"
        self.cfg = cfg
        self.writer = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = self._rows_up_to(resume_step) if resume_step > 0 else []
            self.path.write_text("".join(line + "\n" for line in kept))
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def _rows_up_to(self, resume_step: int) -> list[str]:
        """Lines of the old file with step <= ``resume_step``. A torn last line (the process was
        killed mid-write) is dropped: its step is re-run. A bad line elsewhere means the file is not
        ours or was edited, which is an error naming the line."""
        from megatron_tulu.errors import UserError

        lines = self.path.read_text(errors="replace").splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):
                    print(
                        f"[resume] {self.path}:{number}: dropped a torn last line (the run was killed mid-write)"
                    )
                    continue
                raise UserError(
                    f"{self.path}:{number}: not a JSON metrics row ({exc.msg}, column {exc.colno}); "
                    "fix or delete that line, or resume into a fresh train.output_dir"
                ) from exc
            if isinstance(row, dict) and row.get("step", 0) <= resume_step:
                kept.append(line)
        return kept

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        if self.cfg.jsonl:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Throughput:
    def __init__(self, model_cfg: ModelConfig, seq_len: int, world_size: int, peak_tflops: float):
        self.flops_per_token = train_flops_per_token(model_cfg, seq_len)
        self.world_size, self.peak = world_size, peak_tflops
        self.t = time.perf_counter()

    def measure(self, tokens: int) -> dict[str, float]:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        out = {"step_seconds": dt, "tokens_per_s": tokens / dt}
        if self.peak > 0:
            out["mfu"] = tokens * self.flops_per_token / dt / (self.peak * 1e12 * self.world_size)
        return out


def save_config(cfg: Any, out_dir: str | os.PathLike) -> None:
    if is_rank0():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
