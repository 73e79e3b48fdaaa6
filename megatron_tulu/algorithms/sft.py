"""Supervised fine-tuning (Tülu 3 §4) on Megatron-Core.

The visible order of a run: init parallel -> tokenizer + data -> model (+HF weights) -> optimizer
and scheduler -> resume -> loop(train_step, log, checkpoint) -> final checkpoint + HF export.

Loss: Tülu 3's *sum* loss by default — the summed token NLL of the global batch divided by the
number of sequences in it (what open-instruct's ``--reduce_loss sum`` amounts to with micro-batch
1), or token-mean. Either way the denominator is global (see engine/train_step.py), so the
gradient does not depend on micro-batching, gradient accumulation, DP size or padding.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_tulu.algorithms.loop import (
    BatchOrder,
    Throughput,
    check_batch_geometry,
    ensure_model_source,
    is_rank0,
    rank0_first,
    save_config,
    split_for_rank,
)
from megatron_tulu.algorithms.trainer import SupervisedTrainer
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import SFTRunConfig
from megatron_tulu.data.packing import block_causal_mask, collate_rows, pack_examples, pad_batch
from megatron_tulu.data.sft import load_sft_examples
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.model import build_model, select_layer_spec
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import init_parallel
from megatron_tulu.engine.train_step import forward_batch, prepare_model_for_training
from megatron_tulu.losses.lm import masked_token_loss
from megatron_tulu.losses.vocab_parallel import TokenHead
from megatron_tulu.models.hf_io import export_hf, load_hf_weights, model_config_from_hf

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
        self.hf_source = ensure_model_source(cfg) if cfg.model.hf_path or cfg.model.name == "tiny" else None
        if self.hf_source:
            cfg.model = dataclasses.replace(model_config_from_hf(self.hf_source), name=cfg.model.name)
        self.info = info = init_parallel(cfg.model, cfg.parallel, seed=cfg.train.seed)
        save_config(cfg, self.out_dir)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer or self.hf_source)
        self.rows, self.data_info = build_rows(cfg, self.tokenizer)
        self.num_microbatches = check_batch_geometry(
            cfg.train.global_batch_size, cfg.train.micro_batch_size, info.dp
        )
        self.micro_batch_rows = cfg.train.micro_batch_size
        self.order = BatchOrder(len(self.rows), cfg.train.global_batch_size, cfg.train.seed)
        per_run = self.order.steps_per_epoch * cfg.sft.epochs
        self.total_steps = min(cfg.train.train_iters, per_run) if cfg.train.train_iters > 0 else per_run

        self.chunks = build_model(cfg.model, cfg.parallel, cfg.precision)
        if self.hf_source:
            load_hf_weights(self.chunks, cfg.model, self.hf_source)
        self.optimizer = build_optimizer(self.chunks, cfg.optimizer, cfg.parallel, cfg.precision)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimizer, self.total_steps)
        prepare_model_for_training(self.chunks, self.optimizer)
        _, impl = select_layer_spec(cfg.precision)
        self.forward_step = make_forward_step(
            cfg.model.vocab_size,
            cfg.sft.loss_reduction,
            cfg.data.packing,
            impl == "transformer_engine",
            fused=cfg.train.fused_log_probs,
        )
        self.fixed_len = cfg.train.seq_length if cfg.parallel.pp > 1 else None  # p2p shapes must be static

    def before_steps(self, start: int) -> None:
        cfg = self.cfg
        self.meter = Throughput(
            cfg.model, cfg.train.seq_length, self.info.world_size, cfg.logging.peak_tflops
        )
        if is_rank0():
            d = self.data_info
            print(
                f"[sft] {d['data_report']}; rows={d['rows']} "
                f"packing_efficiency={d.get('packing_efficiency', 'n/a')} steps={self.total_steps} start={start}"
            )

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        cfg = self.cfg
        shares = split_for_rank(
            self.order.rows(step), self.info.dp, self.info.dp_rank, cfg.train.micro_batch_size
        )
        return [
            collate(self.rows, idx, cfg.data.packing, self.data_info["pad_id"], self.fixed_len)
            for idx in shares
        ]

    def step_metrics(self, result, micro) -> dict[str, Any]:
        non_pad = sum(int((b["document_ids"] >= 0).sum()) for b in micro) * self.info.dp
        key = "loss_per_sequence" if self.cfg.sft.loss_reduction == "sum" else "loss_per_token"
        return {
            "loss": result.metrics[key],
            "loss_per_token": result.metrics["loss_per_token"],
            **self.meter.measure(non_pad),
        }

    def finish(self, last: dict[str, Any]) -> dict[str, Any]:
        summary = {**super().finish(last), **{k: v for k, v in self.data_info.items() if k != "pad_id"}}
        if self.cfg.sft.export_hf:
            summary["hf_export"] = str(
                export_hf(self.chunks, self.cfg.model, self.out_dir / "hf", tokenizer_dir=self.hf_source)
            )
        summary["last_metrics"] = last
        return summary


def train_sft(cfg: SFTRunConfig) -> dict[str, Any]:
    return SFTTrainer(cfg).run()


def main(argv: list[str]) -> int:
    """`megatron-tulu sft [hydra overrides]` (run under torchrun for several ranks)."""
    if any(a in ("-h", "--help") for a in argv):
        print(
            main.__doc__
            + "\n\nExample: megatron-tulu sft preset=sft_tulu3_8b model=llama3.1_8b model.hf_path=/ckpt/llama"
        )
        return 0
    cfg = load_config(argv, config_name="sft", schema=SFTRunConfig)
    summary = train_sft(cfg)
    if is_rank0():
        import json

        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # as `megatron-tulu` does: no CPU venv on a GPU node
    sys.exit(main(sys.argv[1:]))
