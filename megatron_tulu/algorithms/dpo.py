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

import dataclasses
import resource
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

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
from megatron_tulu.algorithms.ref_cache import (
    cache_key,
    compute_reference_logps,
    load_or_compute,
    model_fingerprint,
)
from megatron_tulu.algorithms.trainer import SupervisedTrainer
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import DPORunConfig
from megatron_tulu.data.io import data_fingerprint
from megatron_tulu.data.preference import collate_pairs, load_preference_examples
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import init_parallel
from megatron_tulu.engine.train_step import Forward, forward_batch, prepare_model_for_training
from megatron_tulu.losses.dpo import PreferenceLogps, get_dpo_loss, needs_reference
from megatron_tulu.losses.logprobs import sequence_logps
from megatron_tulu.losses.vocab_parallel import TokenHead
from megatron_tulu.models.hf_io import export_hf, load_hf_weights, model_config_from_hf

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
        self.hf_source = hf_source = ensure_model_source(cfg)
        cfg.model = dataclasses.replace(model_config_from_hf(hf_source), name=cfg.model.name)
        self.info = info = init_parallel(cfg.model, cfg.parallel, seed=cfg.train.seed)
        save_config(cfg, self.out_dir)
        tokenizer = load_tokenizer(cfg.data.tokenizer or hf_source)
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

        self.num_microbatches = check_batch_geometry(
            cfg.train.global_batch_size, cfg.train.micro_batch_size, info.dp
        )
        self.micro_batch_rows = cfg.train.micro_batch_size * (2 if mode == "concatenated" else 1)
        self.order = BatchOrder(len(self.pairs), cfg.train.global_batch_size, cfg.train.seed)
        per_run = self.order.steps_per_epoch * cfg.dpo.epochs
        self.total_steps = min(cfg.train.train_iters, per_run) if cfg.train.train_iters > 0 else per_run

        self.chunks = build_model(cfg.model, cfg.parallel, cfg.precision)
        load_hf_weights(self.chunks, cfg.model, hf_source)
        self.ref, self.ref_cache_hit = None, None
        # The registry decides (not a name test), so a plugin's reference-free loss skips the cache too.
        if needs_reference(cfg.dpo.loss):
            key = cache_key(
                model_fingerprint(hf_source),
                data_fingerprint("dpo-ref", [Path(f) for f in files], tokenizer, {"max_seq_len": max_len}),
                {"params_dtype": cfg.precision.params_dtype},
            )
            cache_path = Path(cfg.dpo.ref_cache_dir or self.out_dir / "ref_cache") / f"ref_logps_{key}.pt"
            self.ref, self.ref_cache_hit = load_or_compute(
                cache_path,
                lambda: compute_reference_logps(
                    self.chunks,
                    len(self.pairs),
                    make_batch_builder(self.pairs, mode, pad_id, fixed_len, None),
                    cfg.train.micro_batch_size,
                    forward=forward_pairs(mode, cfg.model.vocab_size, cfg.train.fused_log_probs),
                    sequence_stats=reference_stats(mode),
                    rows_per_pair=2 if mode == "concatenated" else 1,
                ),
            )
        self.optimizer = build_optimizer(self.chunks, cfg.optimizer, cfg.parallel, cfg.precision)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimizer, self.total_steps)
        prepare_model_for_training(self.chunks, self.optimizer)
        self.forward_step = make_forward_step(cfg, cfg.model.vocab_size)
        self.build = make_batch_builder(self.pairs, mode, pad_id, fixed_len, self.ref)

    def before_steps(self, start: int) -> None:
        cfg = self.cfg
        self.meter = Throughput(
            cfg.model, cfg.train.seq_length, self.info.world_size, cfg.logging.peak_tflops
        )
        if is_rank0():
            report = self.report
            cache = "unused" if self.ref is None else "hit" if self.ref_cache_hit else "computed"
            print(
                f"[dpo] {report.pairs} pairs ({report.summary() if hasattr(report, 'summary') else report}); "
                f"loss={cfg.dpo.loss} beta={cfg.dpo.beta} mode={cfg.dpo.forward_mode} "
                f"steps={self.total_steps} start={start} ref_cache={cache}"
            )

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        shares = split_for_rank(
            self.order.rows(step), self.info.dp, self.info.dp_rank, self.cfg.train.micro_batch_size
        )
        return [self.build(idx) for idx in shares]

    def step_metrics(self, result, micro) -> dict[str, Any]:
        timing = self.meter.measure(self.cfg.train.global_batch_size)
        return {
            **result.metrics,
            "samples_per_s": timing["tokens_per_s"],
            "step_seconds": timing["step_seconds"],
        }

    def finish(self, last: dict[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            **super().finish(last),
            "pairs": len(self.pairs),
            "ref_cache_hit": self.ref_cache_hit,
            "forward_mode": self.cfg.dpo.forward_mode,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if self.cfg.dpo.export_hf:
            summary["hf_export"] = str(
                export_hf(self.chunks, self.cfg.model, self.out_dir / "hf", tokenizer_dir=self.hf_source)
            )
        summary["last_metrics"] = last
        return summary


def train_dpo(cfg: DPORunConfig) -> dict[str, Any]:
    return DPOTrainer(cfg).run()


def main(argv: list[str]) -> int:
    """`megatron-tulu dpo [hydra overrides]` (run under torchrun for several ranks)."""
    if any(a in ("-h", "--help") for a in argv):
        print(
            main.__doc__ + "\n\nExample: megatron-tulu dpo preset=dpo_tulu3_8b model.hf_path=/ckpt/tulu3-sft"
        )
        return 0
    summary = train_dpo(load_config(argv, config_name="dpo", schema=DPORunConfig))
    if is_rank0():
        import json

        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # as `megatron-tulu` does: no CPU venv on a GPU node
    sys.exit(main(sys.argv[1:]))
