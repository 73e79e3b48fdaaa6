"""Preference optimisation (Tülu 3 §5): length-normalized DPO by default, any registered loss.

Order of a run (``DPOTrainer`` on the shared lifecycle of ``trainer.py``): setup = init parallel ->
tokenizer + preference pairs -> model (+HF weights) -> reference log-prob cache (forward-only,
before any update; the reference model is never resident during training) ->
optimizer/scheduler; then resume -> steps -> final checkpoint + HF export.

Chosen and rejected go through the model as two forward passes per micro-batch (Tülu 3 Fig. 17,
``dpo.forward_mode=separate``) or one concatenated pass (``concatenated``, needed for PP > 1
because a pipeline stage exchanges a single activation tensor per micro-batch).
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from megatron_tulu.algorithms.loop import ensure_model_source, rank0_first
from megatron_tulu.algorithms.ref_cache import (
    cache_key,
    compute_reference_logps,
    load_or_compute,
    model_fingerprint,
)
from megatron_tulu.algorithms.trainer import SupervisedTrainer, build_trainable
from megatron_tulu.config.schema import DPORunConfig
from megatron_tulu.data.io import data_fingerprint
from megatron_tulu.data.preference import collate_pairs, load_preference_examples
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.train_step import Forward, forward_batch
from megatron_tulu.losses.dpo import PreferenceLogps, get_dpo_loss, needs_reference
from megatron_tulu.losses.logprobs import sequence_logps
from megatron_tulu.losses.vocab_parallel import TokenHead

EMBEDDED_DPO = Path(__file__).resolve().parents[1] / "assets" / "data" / "dpo.jsonl"
SIDES = ("chosen", "rejected")


def forward_pairs(mode: str, vocab_size: int, fused: bool = True) -> Forward:
    """``forward(model, batch) -> (output, batch)``: one pass over the concatenated rows, or one
    pass per side; on the last stage the output is one :class:`TokenHead` of [chosen; rejected]
    stacked on the batch dim."""

    def forward(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if mode == "concatenated":
            return forward_batch(model, batch, vocab_size=vocab_size, fused=fused)
        chosen, batch = forward_batch(model, batch, prefix="chosen_", vocab_size=vocab_size, fused=fused)
        rejected, batch = forward_batch(model, batch, prefix="rejected_", vocab_size=vocab_size, fused=fused)
        return TokenHead.cat([chosen, rejected]), batch  # separate mode runs at PP 1 only

    return forward


def stacked_targets(batch: dict[str, Any], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "concatenated":
        return batch["labels"], batch["loss_mask"]
    return (
        torch.cat([batch["chosen_labels"], batch["rejected_labels"]]),
        torch.cat([batch["chosen_loss_mask"], batch["rejected_loss_mask"]]),
    )


def pair_logps(head: TokenHead, batch: dict[str, Any], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob sums, target counts) per row of [chosen; rejected]."""
    labels, mask = stacked_targets(batch, mode)
    return sequence_logps(head.log_probs(labels), mask)


def reference_stats(mode: str) -> Callable:
    """Per-pair log-prob sums and token counts of both sides, for the reference cache."""

    def stats(head: TokenHead, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        sums, counts = pair_logps(head, batch, mode)
        b = sums.shape[0] // 2
        return {
            "chosen": sums[:b],
            "rejected": sums[b:],
            "chosen_tokens": counts[:b],
            "rejected_tokens": counts[b:],
        }

    return stats


def make_forward_step(cfg: DPORunConfig, vocab_size: int) -> Callable:
    loss_fn = get_dpo_loss(cfg.dpo.loss)
    mode = cfg.dpo.forward_mode
    forward = forward_pairs(mode, vocab_size, cfg.train.fused_log_probs)

    def forward_step(data_iterator: Iterator[dict[str, Any]], model: torch.nn.Module):
        out, batch = forward(model, next(data_iterator))

        def loss_func(head: TokenHead):
            sums, counts = pair_logps(head, batch, mode)
            b = sums.shape[0] // 2
            logps = PreferenceLogps(
                policy_chosen=sums[:b],
                policy_rejected=sums[b:],
                # Reference-free losses (registry: needs_reference) train without the cache.
                ref_chosen=batch["ref_chosen"].to(sums.dtype) if "ref_chosen" in batch else None,
                ref_rejected=batch["ref_rejected"].to(sums.dtype) if "ref_rejected" in batch else None,
                chosen_tokens=counts[:b],
                rejected_tokens=counts[b:],
            )
            losses, metrics = loss_fn(
                logps,
                beta=cfg.dpo.beta,
                label_smoothing=cfg.dpo.label_smoothing,
                gamma_beta_ratio=cfg.dpo.gamma_beta_ratio,
            )
            pairs = torch.tensor(b, dtype=torch.int, device=losses.device)
            count = pairs.to(torch.float32)
            reported = {"loss": torch.stack([losses.detach().sum(), count])}
            reported.update({k: torch.stack([v.detach().float().sum(), count]) for k, v in metrics.items()})
            return losses.sum(), pairs, reported

        return out, loss_func

    return forward_step


def make_batch_builder(pairs: Sequence[Any], mode: str, pad_id: int, fixed_len: int | None, ref: dict | None):
    def build(idx: Sequence[int]) -> dict[str, Any]:
        batch = collate_pairs(
            [pairs[i] for i in idx], pad_to=fixed_len, pad_id=pad_id, concatenated=mode == "concatenated"
        )
        if ref is not None:
            index = torch.tensor(list(idx))
            batch["ref_chosen"], batch["ref_rejected"] = ref["chosen"][index], ref["rejected"][index]
        return batch

    return build


class DPOTrainer(SupervisedTrainer):
    """Preference optimisation on the shared lifecycle (:mod:`megatron_tulu.algorithms.trainer`)."""

    name = "dpo"

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.dpo.forward_mode not in ("separate", "concatenated"):
            raise ValueError(f"dpo.forward_mode must be separate|concatenated, got {cfg.dpo.forward_mode!r}")
        if cfg.parallel.pp > 1 and cfg.dpo.forward_mode == "separate":
            raise ValueError(
                "dpo.forward_mode=separate needs parallel.pp=1 (a stage passes one tensor per "
                "micro-batch); set dpo.forward_mode=concatenated"
            )
        self.start(ensure_model_source(cfg))
        tokenizer = load_tokenizer(cfg.data.tokenizer or self.hf_source)
        files = cfg.data.train_files or [str(EMBEDDED_DPO)]
        max_len = min(cfg.data.max_seq_len, cfg.train.seq_length)

        def load():
            return load_preference_examples(
                files,
                tokenizer,
                max_seq_len=max_len,
                skip_bad=cfg.data.skip_bad,
                cache_dir=cfg.data.cache_dir,
            )

        self.pairs, self.report = rank0_first(load)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        fixed_len = cfg.train.seq_length if cfg.parallel.pp > 1 else None
        mode = cfg.dpo.forward_mode
        self.plan_steps(len(self.pairs), cfg.train.micro_batch_size * (2 if mode == "concatenated" else 1))

        def reference(chunks: list[torch.nn.Module]) -> None:
            """The reference log-probs of the loaded weights, before any update (cached on disk)."""
            self.ref, self.ref_cache_hit = None, None
            # The registry decides (not a name test), so a plugin's reference-free loss skips the cache too.
            if not needs_reference(cfg.dpo.loss):
                return
            key = cache_key(
                model_fingerprint(self.hf_source),
                data_fingerprint("dpo-ref", [Path(f) for f in files], tokenizer, {"max_seq_len": max_len}),
                {"params_dtype": cfg.precision.params_dtype},
            )
            cache_path = Path(cfg.dpo.ref_cache_dir or self.out_dir / "ref_cache") / f"ref_logps_{key}.pt"
            self.ref, self.ref_cache_hit = load_or_compute(
                cache_path,
                lambda: compute_reference_logps(
                    chunks,
                    len(self.pairs),
                    make_batch_builder(self.pairs, mode, pad_id, fixed_len, None),
                    cfg.train.micro_batch_size,
                    forward=forward_pairs(mode, cfg.model.vocab_size, cfg.train.fused_log_probs),
                    sequence_stats=reference_stats(mode),
                    rows_per_pair=2 if mode == "concatenated" else 1,
                ),
            )

        self.chunks, self.optimizer, self.scheduler = build_trainable(
            cfg, self.total_steps, hf_source=self.hf_source, before_optimizer=reference
        )
        self.forward_step = make_forward_step(cfg, cfg.model.vocab_size)
        self.build = make_batch_builder(self.pairs, mode, pad_id, fixed_len, self.ref)

    def describe(self, start: int) -> str:
        cfg, report = self.cfg, self.report
        cache = "unused" if self.ref is None else "hit" if self.ref_cache_hit else "computed"
        return (
            f"{report.pairs} pairs ({report.summary() if hasattr(report, 'summary') else report}); "
            f"loss={cfg.dpo.loss} beta={cfg.dpo.beta} mode={cfg.dpo.forward_mode} "
            f"steps={self.total_steps} start={start} ref_cache={cache}"
        )

    def collate(self, rows: list[int]) -> dict[str, Any]:
        return self.build(rows)

    def step_metrics(self, result, micro) -> dict[str, Any]:
        timing = self.meter.measure(self.cfg.train.global_batch_size)
        return {
            **result.metrics,
            "samples_per_s": timing["tokens_per_s"],
            "step_seconds": timing["step_seconds"],
        }

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": len(self.pairs),
            "ref_cache_hit": self.ref_cache_hit,
            "forward_mode": self.cfg.dpo.forward_mode,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def train_dpo(cfg: DPORunConfig) -> dict[str, Any]:
    return DPOTrainer(cfg).run()
