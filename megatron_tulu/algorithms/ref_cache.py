"""Reference log-prob cache for DPO (Tülu 3 §5.4.2): one forward-only pass before training.

The reference model is the initial policy, so the cache is computed with the policy's own weights
before the first update and the reference model never sits in memory during training. The cache
file is keyed by a hash of the model source, the data (files + tokenizer + settings) and the
settings that change log-probs, so it is reused on resume and across runs and invalidated when any
of them changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_tulu.engine.train_step import Forward, forward_only_collect

_SAMPLE = 1 << 20  # bytes hashed from the start, middle and end of each weight file


def model_fingerprint(hf_dir: str | os.PathLike) -> str:
    """Config + per-weight-file size and sampled content (full hashes of 800 GB are too slow)."""
    h = hashlib.sha256()
    root = Path(hf_dir)
    h.update((root / "config.json").read_bytes())
    for f in sorted(root.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as handle:
            for offset in (0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)):
                handle.seek(offset)
                h.update(handle.read(_SAMPLE))
    return h.hexdigest()


def cache_key(model_fp: str, data_fp: str, settings: dict[str, Any]) -> str:
    payload = json.dumps({"model": model_fp, "data": data_fp, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


REFERENCE_STATS = ("chosen", "rejected", "chosen_tokens", "rejected_tokens")


def compute_reference_logps(
    chunks: list[torch.nn.Module],
    num_pairs: int,
    make_batch: Callable[[Sequence[int]], dict[str, Any]],
    micro_batch: int,
    *,
    forward: Forward,
    sequence_stats: Callable[[torch.Tensor, dict[str, Any]], dict[str, torch.Tensor]],
    rows_per_pair: int = 2,
) -> dict[str, torch.Tensor]:
    """Forward-only pass over every pair; returns {chosen, rejected, chosen_tokens, rejected_tokens} [N].

    DP rank d takes pairs d, d+dp, ...; ``forward`` and ``sequence_stats`` (per-pair sums of the
    stats above, computed on the last stage) go to :func:`forward_only_collect`, which gives every
    pipeline rank the result; the DP ranks then exchange their shares, so every rank holds the
    whole table. ``rows_per_pair`` is the batch rows one pair occupies in the tensors a pipeline
    stage exchanges (2 when chosen and rejected are concatenated).
    """
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    mine = list(range(dp_rank, num_pairs, dp))
    rows: dict[int, list[float]] = {}
    for start in range(0, len(mine), micro_batch):
        idx = mine[start : start + micro_batch]
        stats = forward_only_collect(
            chunks, [make_batch(idx)], sequence_stats, len(idx) * rows_per_pair, forward=forward
        )
        for j, i in enumerate(idx):
            rows[i] = [float(stats[k][j]) for k in REFERENCE_STATS]
    if dp > 1:
        gathered: list[dict[int, list[float]]] = [{} for _ in range(dp)]
        dist.all_gather_object(gathered, rows, group=parallel_state.get_data_parallel_group())
        rows = {k: v for part in gathered for k, v in part.items()}
    table = torch.tensor([rows[i] for i in range(num_pairs)], dtype=torch.float64)
    return {name: table[:, i] for i, name in enumerate(REFERENCE_STATS)}


def load_or_compute(
    path: Path, compute: Callable[[], dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], bool]:
    """Read the cache file if present, else compute it (collectively) and write it atomically on rank 0."""
    if path.is_file():
        return torch.load(path), True
    table = compute()
    if not dist.is_initialized() or dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(table, tmp)
        os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()
    return table, False
