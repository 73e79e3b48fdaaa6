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

from megatron_tulu.engine.train_step import forward_backward

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


def compute_reference_logps(
    chunks: list[torch.nn.Module],
    num_pairs: int,
    make_batch: Callable[[Sequence[int]], dict[str, Any]],
    forward_step: Callable,
    micro_batch: int,
    rows_per_pair: int = 2,
) -> dict[str, torch.Tensor]:
    """Forward-only pass over every pair; returns {chosen, rejected, chosen_tokens, rejected_tokens} [N].

    DP rank d takes pairs d, d+dp, ...; the last pipeline stage computes the sums, which are then
    gathered over DP and broadcast over PP so every rank holds the whole table. ``rows_per_pair``
    is the batch rows one pair occupies in the tensors a pipeline stage exchanges (2 when chosen
    and rejected are concatenated).
    """
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    mine = list(range(dp_rank, num_pairs, dp))
    batches = [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]
    rows: dict[int, list[float]] = {}
    for chunk in chunks:
        chunk.eval()
    with torch.no_grad():
        for idx in batches:
            batch = make_batch(idx)
            out = forward_backward(
                forward_step,
                iter([batch]),
                chunks,
                num_microbatches=1,
                seq_length=int(batch.get("tokens", batch.get("chosen_tokens")).shape[-1]),
                micro_batch_size=len(idx) * rows_per_pair,
                forward_only=True,
            )
            if parallel_state.is_pipeline_last_stage():
                stats = out[0]
                for j, i in enumerate(idx):
                    rows[i] = [
                        float(stats[k][j]) for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")
                    ]
    for chunk in chunks:
        chunk.train()
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[dict[int, list[float]]] = [{} for _ in range(dp)]
        dist.all_gather_object(gathered, rows, group=parallel_state.get_data_parallel_group())
        rows = {k: v for part in gathered for k, v in part.items()}
        holder = [rows]
        dist.broadcast_object_list(
            holder,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
        rows = holder[0]
    table = torch.tensor([rows[i] for i in range(num_pairs)], dtype=torch.float64)
    return {
        "chosen": table[:, 0],
        "rejected": table[:, 1],
        "chosen_tokens": table[:, 2],
        "rejected_tokens": table[:, 3],
    }


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
