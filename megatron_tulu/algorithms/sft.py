"""Supervised fine-tuning (Tülu 3 §4) on Megatron-Core.

The visible order of a run: init parallel -> tokenizer + data -> model (+HF weights) -> optimizer
and scheduler -> resume -> loop(train_step, log, checkpoint) -> final checkpoint + HF export.

Loss: Tülu 3's *sum* loss by default — the summed token NLL of the global batch divided by the
number of sequences in it (what open-instruct's ``--reduce_loss sum`` amounts to with micro-batch
1), or token-mean. Either way the denominator is global (see engine/train_step.py), so the
gradient does not depend on micro-batching, gradient accumulation, DP size or padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_tulu.algorithms.loop import ensure_model_source, rank0_first
from megatron_tulu.algorithms.trainer import SupervisedTrainer, build_trainable
from megatron_tulu.config.schema import SFTRunConfig
from megatron_tulu.data.packing import block_causal_mask, collate_rows, pack_examples, pad_batch
from megatron_tulu.data.sft import load_sft_examples
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.model import select_layer_spec
from megatron_tulu.engine.train_step import forward_batch
from megatron_tulu.losses.lm import masked_token_loss
from megatron_tulu.losses.vocab_parallel import TokenHead

EMBEDDED_SFT = Path(__file__).resolve().parents[1] / "assets" / "data" / "sft.jsonl"


def sequences_with_labels(document_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Number of (row, document) pairs that carry at least one trained target."""
    trained = loss_mask > 0
    pairs = torch.stack(
        [
            torch.arange(document_ids.shape[0], device=document_ids.device)
            .unsqueeze(1)
            .expand_as(document_ids)[trained],
            document_ids[trained],
        ]
    )
    return torch.tensor(pairs.unique(dim=1).shape[1] if pairs.numel() else 0, dtype=torch.int)


def sft_loss(
    head: TokenHead, batch: dict[str, Any], reduction: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(numerator, global-batch denominator part, metrics) for Megatron's per-token contract."""
    logp = head.log_probs(batch["labels"])
    loss_sum, tokens = masked_token_loss(-logp, batch["loss_mask"])
    sequences = sequences_with_labels(batch["document_ids"], batch["loss_mask"]).to(tokens.device)
    denominator = sequences if reduction == "sum" else tokens
    metrics = {
        "loss_per_token": torch.stack([loss_sum.detach(), tokens.float()]),
        "loss_per_sequence": torch.stack([loss_sum.detach(), sequences.float()]),
    }
    return loss_sum, denominator, metrics


def model_inputs(batch: dict[str, Any], packing: bool, use_thd: bool) -> dict[str, Any]:
    """GPTModel kwargs. Packed rows never attend across documents: THD cu_seqlens with Transformer
    Engine, an exact block-causal dense mask on the local (CPU) attention."""
    if packing and use_thd:
        b, s = batch["tokens"].shape
        cu = batch["cu_seqlens"].to(batch["tokens"].device)
        return {
            "input_ids": batch["tokens"].reshape(1, b * s),
            "position_ids": batch["position_ids"].reshape(1, b * s),
            "attention_mask": None,
            "packed_seq_params": PackedSeqParams(
                qkv_format="thd",
                cu_seqlens_q=cu,
                cu_seqlens_kv=cu,
                max_seqlen_q=batch["max_seqlen"],
                max_seqlen_kv=batch["max_seqlen"],
            ),
        }
    mask = block_causal_mask(batch["document_ids"]) if packing else None
    return {"input_ids": batch["tokens"], "position_ids": batch["position_ids"], "attention_mask": mask}


def make_forward_step(
    vocab_size: int, reduction: str, packing: bool, use_thd: bool, fused: bool = True
) -> Callable:
    def forward_step(data_iterator: Iterator[dict[str, Any]], model: torch.nn.Module):
        out, batch = forward_batch(
            model,
            next(data_iterator),
            inputs=lambda b: model_inputs(b, packing, use_thd),
            vocab_size=vocab_size,
            fused=fused,
        )
        if use_thd and packing and isinstance(out, TokenHead):  # THD rows came as one [1, b*s]
            out = out.reshaped(*batch["tokens"].shape)

        def loss_func(head: TokenHead):
            return sft_loss(head, batch, reduction)

        return out, loss_func

    return forward_step


def build_rows(cfg: SFTRunConfig, tokenizer) -> tuple[Any, dict[str, Any]]:
    """Tokenised (and packed) rows. Rank 0 tokenises first so the others hit the datasets cache."""
    files = cfg.data.train_files or [str(EMBEDDED_SFT)]
    load = lambda: load_sft_examples(  # noqa: E731
        files,
        tokenizer,
        max_seq_len=min(cfg.data.max_seq_len, cfg.train.seq_length),
        skip_bad=cfg.data.skip_bad,
        truncate=cfg.data.truncate,
        cache_dir=cfg.data.cache_dir,
    )
    examples, report = rank0_first(load)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    info = {"data_report": report.summary(), "examples": len(examples), "skipped": report.skipped.total}
    if cfg.data.packing:
        rows = pack_examples(examples, cfg.train.seq_length, pad_id=pad_id, seed=cfg.train.seed)
        info["packing_efficiency"] = rows.efficiency
    else:
        rows = examples
    info["rows"] = len(rows)
    info["pad_id"] = pad_id
    return rows, info


def collate(rows: Any, idx: list[int], packing: bool, pad_id: int, fixed_len: int | None) -> dict[str, Any]:
    if packing:
        return collate_rows([rows[i] for i in idx])
    return pad_batch([rows[i] for i in idx], pad_to=fixed_len, pad_id=pad_id)


class SFTTrainer(SupervisedTrainer):
    """SFT on the shared lifecycle (:mod:`megatron_tulu.algorithms.trainer`)."""

    name = "sft"

    def setup(self) -> None:
        cfg = self.cfg
        self.start(ensure_model_source(cfg) if cfg.model.hf_path or cfg.model.name == "tiny" else None)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer or self.hf_source)
        self.rows, self.data_info = build_rows(cfg, self.tokenizer)
        self.plan_steps(len(self.rows), cfg.train.micro_batch_size)
        self.chunks, self.optimizer, self.scheduler = build_trainable(
            cfg, self.total_steps, hf_source=self.hf_source
        )
        _, impl = select_layer_spec(cfg.precision)
        self.forward_step = make_forward_step(
            cfg.model.vocab_size,
            cfg.sft.loss_reduction,
            cfg.data.packing,
            impl == "transformer_engine",
            fused=cfg.train.fused_log_probs,
        )
        self.fixed_len = cfg.train.seq_length if cfg.parallel.pp > 1 else None  # p2p shapes must be static

    def describe(self, start: int) -> str:
        d = self.data_info
        return (
            f"{d['data_report']}; rows={d['rows']} "
            f"packing_efficiency={d.get('packing_efficiency', 'n/a')} steps={self.total_steps} start={start}"
        )

    def collate(self, rows: list[int]) -> dict[str, Any]:
        return collate(self.rows, rows, self.cfg.data.packing, self.data_info["pad_id"], self.fixed_len)

    def step_metrics(self, result, micro) -> dict[str, Any]:
        non_pad = sum(int((b["document_ids"] >= 0).sum()) for b in micro) * self.info.dp
        key = "loss_per_sequence" if self.cfg.sft.loss_reduction == "sum" else "loss_per_token"
        return {
            "loss": result.metrics[key],
            "loss_per_token": result.metrics["loss_per_token"],
            **self.meter.measure(non_pad),
        }

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.data_info.items() if k != "pad_id"}


def train_sft(cfg: SFTRunConfig) -> dict[str, Any]:
    return SFTTrainer(cfg).run()
