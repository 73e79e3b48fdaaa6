"""DPO step throughput and memory: our Megatron-Core DPO (both forward modes) vs TRL's DPOTrainer on CPU.

    python benchmarks/bench_dpo.py [--steps 6] [--warmup 2] [--global-batch 16] [--micro-batch 8]
                                   [--threads 2] [--sides ours_sep,ours_cat,trl] [--out FILE]

Three sides, in one run, each in its own subprocess:

* ``ours_sep``: megatron-tulu DPO, ``dpo.forward_mode=separate`` (chosen and rejected as two forward
  passes per micro-batch, Tülu 3 Fig. 17);
* ``ours_cat``: megatron-tulu DPO, ``dpo.forward_mode=concatenated`` (one pass over [chosen; rejected]);
* ``trl``: TRL ``DPOTrainer`` with ``loss_type=["sigmoid_norm"]`` (TRL's name for Tülu 3's ``dpo_norm``).

All three get:

* the same weights: the embedded tiny Llama (``build_tiny_model``), fp32;
* the same pairs in the same order: the parent tokenizes ``assets/data/dpo.jsonl`` once with our loader
  (Tülu chat template; targets = the final reply + EOS), takes the pairs of each step from our seeded
  ``BatchOrder`` and writes them to one file that every worker reads. TRL gets them pre-tokenized as
  ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (its own tokenization step is skipped), so its
  completion mask covers exactly the tokens our loss mask covers;
* the same batch geometry: ``--global-batch`` pairs per optimizer step in micro-batches of
  ``--micro-batch`` pairs (gradient accumulation over the rest); each micro-batch padded (right) to its
  longest sequence of either side on every side;
* the same loss: length-normalized DPO, β = ``--beta``, mean over the pairs of the global batch;
* the same reference: log-probs of the initial weights, PRECOMPUTED before training in a forward-only pass
  over exactly the pairs the run trains on (ours: ``compute_reference_logps``, the DPO trainer's cache
  fill; TRL: ``precompute_ref_log_probs=True``), in micro-batches of ``--micro-batch`` pairs. No reference
  model is resident during training on any side. The precompute is timed separately and excluded from the
  step timings and from the training-loop peak RSS;
* the same optimizer: AdamW, constant LR ``--lr``, betas (0.9, 0.999), eps 1e-8, no weight decay, grad-norm
  clipping at 1.0;
* the same intra-op thread count (``OMP_NUM_THREADS`` and ``torch.set_num_threads``).

Throughput is pairs per second over the timed steps (after ``--warmup`` steps), from the end of the last
warm-up step to the end of the last step, so collation counts. CPU-seconds per step (process CPU time,
all threads) is reported too, since wall time on a loaded machine is noisy. Memory: RSS before the training
loop, peak RSS over the training loop (``VmHWM`` reset after setup and the reference precompute) and over
the whole worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trl_harness as h
from common import fmt_bytes

SIDE_LABELS = {
    "ours_sep": "megatron-tulu DPO (Megatron-Core), forward_mode=separate",
    "ours_cat": "megatron-tulu DPO (Megatron-Core), forward_mode=concatenated",
    "trl": "TRL DPOTrainer, loss_type=sigmoid_norm",
}


# --------------------------------------------------------------------------------------------------
# Parent: data + orchestration
# --------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build the tiny model and the pairs of every step (in order); returns the spec the workers read."""
    from megatron_tulu.algorithms.dpo import EMBEDDED_DPO
    from megatron_tulu.algorithms.loop import BatchOrder
    from megatron_tulu.data.preference import load_preference_examples

    model_dir, tokenizer, pad_id = h.tiny_model(args, work)
    pairs, report = load_preference_examples(
        [str(EMBEDDED_DPO)], tokenizer, max_seq_len=args.max_len, cache_dir=work / "cache"
    )
    order = BatchOrder(len(pairs), args.global_batch, args.seed)
    total = args.warmup + args.steps
    # Flattened in step order: pairs [s*G, (s+1)*G) form step s on every side.
    flat = []
    for step in range(total):
        for i in order.rows(step):
            p = pairs[i]
            if p.chosen_input_ids[: p.prompt_len] != p.rejected_input_ids[: p.prompt_len]:
                raise AssertionError("chosen and rejected prompts differ")
            flat.append(
                {
                    "id": p.id,
                    "prompt_len": p.prompt_len,
                    "chosen_input_ids": p.chosen_input_ids,
                    "chosen_labels": p.chosen_labels,
                    "rejected_input_ids": p.rejected_input_ids,
                    "rejected_labels": p.rejected_labels,
                }
            )
    G = args.global_batch
    tokens = [
        sum(len(q["chosen_input_ids"]) + len(q["rejected_input_ids"]) for q in flat[s * G : (s + 1) * G])
        for s in range(total)
    ]
    facts = {
        "pairs_in_file": len(pairs),
        "pairs_trained": len(flat),
        "unique_pairs_trained": len({q["id"] for q in flat}),
        "longest_sequence": max(max(len(q["chosen_input_ids"]), len(q["rejected_input_ids"])) for q in flat),
        "mean_sequence": sum(len(q["chosen_input_ids"]) + len(q["rejected_input_ids"]) for q in flat)
        / (2 * len(flat)),
        "unpadded_tokens_per_step": tokens,
        "report": report.summary(),
    }
    return h.make_spec(args, work, model_dir, pad_id, flat, facts, max_len=args.max_len, beta=args.beta)


NOTES = [
    "Reference: precomputed on every side (ours: the DPO trainer's forward-only cache fill; TRL: "
    "precompute_ref_log_probs=True), over exactly the pairs trained, micro-batch --micro-batch; excluded "
    "from the step timings and from the training-loop peak RSS, reported in its own rows.",
    "Step 1 loss is log 2 = 0.693147 on every side up to rounding, because the policy still equals the "
    "reference: it checks that the reference log-probs and the policy log-probs come from the same model "
    "and tokens, not the loss formula. The later steps check the rest (same loss, same gradients, same "
    "optimizer).",
    "Ours 'separate' runs chosen and rejected as two [micro_batch, L] forwards, 'concatenated' as one "
    "[2*micro_batch, L] forward; TRL always concatenates. All pad to the longest sequence of either side in "
    "the micro-batch.",
    "TRL computes log-probs through its fused (chunked) LM head and also computes per-token entropy, mean "
    "logits and top-1 accuracy every step for logging; ours materializes the full [b, L, V] logits and a "
    "vocab-parallel log-softmax.",
    "Reward accuracy is each side's own logged metric and the definitions differ: ours compares the "
    "length-normalized rewards the dpo_norm loss uses; TRL's rewards/accuracies compares beta * the summed "
    "log-ratios even under sigmoid_norm. So it may differ although the losses agree.",
    "Memory: the tiny model (5.2M params, 20 MiB) is small next to the framework/runtime baseline (~575 MiB "
    "before training on every side), so the comparable number is the growth over the loop (peak - before); "
    "it includes the AdamW state (40 MiB) allocated at the first step, logits [rows, L, 4096] fp32 and their "
    "log-softmax, and allocator slack (RSS is coarse).",
    "Megatron pads the vocabulary (3,999 -> 4,096 rows of embedding/output), hence ~50k more parameters.",
]
BENCH = h.Benchmark(
    "dpo_step_cpu",
    __file__,
    SIDE_LABELS,
    NOTES,
    "pairs",
    dict(
        steps=6,
        warmup=2,
        global_batch=16,
        micro_batch=8,
        lr=5e-4,
        sides="ours_sep,ours_cat,trl",
        out="dpo.json",
    ),
)


def main(argv: list[str] | None = None) -> int:
    p = h.parser(__doc__, BENCH)
    p.add_argument("--max-len", type=int, default=256, help="max tokens per sequence (none is longer here)")
    p.add_argument("--beta", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each side keeps its best")
    args = p.parse_args(argv)
    if args.worker:
        return h.serve_worker(args, worker_ours, worker_trl)

    sides, work, t0 = h.begin(p, args, BENCH)
    spec = prepare(args, work)

    def run(side: str) -> dict[str, Any]:
        res = h.launch(BENCH, side, spec, work, record_load=True)
        summary = h.summarize(res, args.warmup, args.steps, "pairs", args.global_batch * args.steps)
        return {**res, **summary, "ref_pairs_per_s": res["ref_pairs"] / res["ref_seconds"]}

    keep = ("pairs_per_s", "cpu_seconds_per_step", "peak_rss_train", "loadavg_1min")
    results = h.run_rounds(sides, args.repeats, run, keep)

    total = args.warmup + args.steps
    rows = [
        *h.speed_rows("pairs", "pairs", ".2f"),
        *h.rows("peak_rss_train", "rss_before_train"),
        ("peak - before (loop growth)", lambda r: fmt_bytes(r["peak_rss_train"] - r["rss_before_train"])),
        h.ROWS["peak_rss_lifetime"],
        ("ref precompute s (wall)", lambda r: f"{r['ref_seconds']:.2f}"),
        ("ref precompute CPU-s", lambda r: f"{r['ref_cpu_seconds']:.2f}"),
        ("ref precompute pairs/s", lambda r: f"{r['ref_pairs_per_s']:.1f}"),
        *h.rows("param_count", "optimizer_state_bytes"),
        *h.loss_rows(total, ".6f"),
        ("grad norm step 1", lambda r: f"{r['grad_norms'][0]:.6f}"),
        (f"reward acc step {total} (own def.)", lambda r: f"{r['reward_accuracies'][-1]:.3f}"),
        ("1-min load avg before/after", lambda r: "/".join(f"{x:.1f}" for x in r["loadavg_1min"])),
        h.ROWS["wall_seconds"],
    ]
    base = sides[0]
    loss_key, ref_key = "loss_max_abs_diff_vs_" + base, "ref_logp_max_abs_diff_vs_" + base
    h.max_abs_diff(results, base, loss_key, lambda r: r["losses"])
    h.max_abs_diff(
        results, base, ref_key, lambda r: [x for k in ("chosen", "rejected") for x in r["ref_first_pairs"][k]]
    )
    rows.append((f"max |ref logp - {base}| (4 pairs)", lambda r: f"{r[ref_key]:.1e}"))
    rows.append((f"max |loss - {base}| (all steps)", lambda r: f"{r[loss_key]:.1e}"))
    keys = ("global_batch", "micro_batch", "warmup", "steps", "lr", "beta", "max_len", "seed", "threads")
    settings = h.settings_of(
        spec,
        keys,
        repeats=args.repeats,
        loss="length-normalized DPO (ours dpo_norm / TRL sigmoid_norm), mean over pairs",
        reference="precomputed before training (forward-only), excluded from step timings",
    )
    headline = (
        f"DPO step on CPU: {args.global_batch} pairs per step (micro-batch {args.micro_batch}), "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.threads} threads, LR {args.lr}, "
        f"beta {args.beta}, reference precomputed"
    )
    return h.finish(BENCH, args, sides, results, rows, spec, settings, headline, t0)


# --------------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------------


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    h.worker_threads(spec)
    import torch

    from megatron_tulu.algorithms.dpo import (
        forward_pairs,
        make_batch_builder,
        make_forward_step,
        reference_stats,
    )
    from megatron_tulu.algorithms.loop import split_for_rank
    from megatron_tulu.algorithms.ref_cache import compute_reference_logps
    from megatron_tulu.config.schema import DPORunConfig
    from megatron_tulu.data.preference import PrefExample
    from megatron_tulu.engine.parallel import destroy_parallel

    mode = "separate" if spec["side"] == "ours_sep" else "concatenated"
    total = spec["warmup"] + spec["steps"]
    G, mb = spec["global_batch"], spec["micro_batch"]
    overrides = [
        *h.ours_overrides(spec, total, spec["side"]),
        f"train.seq_length={spec['max_len']}",
        f"data.max_seq_len={spec['max_len']}",
        "dpo.loss=dpo_norm",
        f"dpo.beta={spec['beta']}",
        f"dpo.forward_mode={mode}",
    ]
    cfg, info, chunks = h.build_ours(spec, overrides, "dpo", DPORunConfig)
    pairs = [
        PrefExample(
            q["chosen_input_ids"],
            q["chosen_labels"],
            q["rejected_input_ids"],
            q["rejected_labels"],
            q["prompt_len"],
            location="bench",
            id=q["id"],
        )
        for q in h.load_data(spec)
    ]
    pad_id = spec["pad_id"]

    # Reference log-probs: the same forward-only pass train_dpo runs to fill its cache.
    ref_t0, ref_c0 = time.perf_counter(), time.process_time()
    ref = compute_reference_logps(
        chunks,
        len(pairs),
        make_batch_builder(pairs, mode, pad_id, None, None),
        mb,
        forward=forward_pairs(mode, cfg.model.vocab_size, cfg.train.fused_log_probs),
        sequence_stats=reference_stats(mode),
        rows_per_pair=2 if mode == "concatenated" else 1,
    )
    ref_seconds, ref_cpu = time.perf_counter() - ref_t0, time.process_time() - ref_c0

    model = h.ours_optimizer(chunks, cfg, total)
    build = make_batch_builder(pairs, mode, pad_id, None, ref)
    forward_step = make_forward_step(cfg, cfg.model.vocab_size)
    num_mb = G // (mb * info.dp)
    rows_per_mb = mb * (2 if mode == "concatenated" else 1)

    def batches(step: int) -> tuple[list[Any], int]:
        rows = list(range(step * G, (step + 1) * G))
        micro = [build(idx) for idx in split_for_rank(rows, info.dp, info.dp_rank, mb)]
        return micro, max(int(v.shape[-1]) for k, v in micro[0].items() if k.endswith("tokens"))

    clock = h.StepClock()
    accs = []
    for result in h.train_ours(clock, model, forward_step, total, batches, num_mb, rows_per_mb):
        clock.losses.append(result.metrics["loss"])
        accs.append(result.metrics.get("reward_accuracy", float("nan")))

    out = {
        "forward_mode": mode,
        "threads": torch.get_num_threads(),
        **clock.times(),
        "losses": clock.losses,
        "reward_accuracies": accs,
        "grad_norms": clock.grad_norms,
        "ref_seconds": ref_seconds,
        "ref_cpu_seconds": ref_cpu,
        "ref_pairs": len(pairs),
        "ref_first_pairs": {
            k: ref[k][:4].tolist() for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")
        },
        **clock.memory(),
        **h.footprint([q for c in chunks for q in c.parameters()], model.optimizer),
    }
    destroy_parallel()
    return out


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    h.worker_threads(spec)
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    total = spec["warmup"] + spec["steps"]
    G, mb = spec["global_batch"], spec["micro_batch"]
    # Pre-tokenized with our loader: prompt (shared), then each reply + EOS as the completion.
    rows = [
        {
            "prompt_ids": q["chosen_input_ids"][: q["prompt_len"]],
            "chosen_ids": q["chosen_input_ids"][q["prompt_len"] :],
            "rejected_ids": q["rejected_input_ids"][q["prompt_len"] :],
        }
        for q in h.load_data(spec)
    ]
    dataset = Dataset.from_list(rows)
    tokenizer, model = h.trl_model(spec)

    clock = h.StepClock()
    timing: dict[str, Any] = {"mb_losses": [], "accs_mb": [], "accs": []}

    class BenchDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already tokenized (prompt_ids / chosen_ids / rejected_ids), none too long

        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0, c0 = time.perf_counter(), time.process_time()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            timing["ref_seconds"] = time.perf_counter() - t0
            timing["ref_cpu_seconds"] = time.process_time() - c0
            timing["ref_pairs"] = len(dataset)
            timing["ref_first_pairs"] = {
                "chosen": out["ref_chosen_logps"][:4],
                "rejected": out["ref_rejected_logps"][:4],
            }
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            timing["mb_losses"].append(float((loss[0] if return_outputs else loss).detach()))
            timing["accs_mb"].append(self._metrics["train"]["rewards/accuracies"][-1])
            return loss

    config = DPOConfig(
        **h.trl_matched_args(spec, total, mb, G),
        max_length=spec["max_len"],
        loss_type=["sigmoid_norm"],
        beta=spec["beta"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=mb,
    )

    class StepMeans(TrainerCallback):
        """The step's loss and reward accuracy: means over its (equal) micro-batches."""

        def on_step_end(self, args, state, control, **kwargs):
            mbs, timing["mb_losses"] = timing["mb_losses"], []
            clock.losses.append(sum(mbs) / len(mbs))  # equal micro-batches: mean = global-batch mean
            accs, timing["accs_mb"] = timing["accs_mb"], []
            timing["accs"].append(sum(accs) / max(1, len(accs)))

    trainer = BenchDPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[h.trl_clock_callback(clock, log_losses=False), StepMeans()],
    )
    trainer.train()
    clock.stop()

    return {
        "threads": torch.get_num_threads(),
        "attention": f"transformers {model.config._attn_implementation}, padding mask",
        **clock.times(),
        "losses": clock.losses,
        "reward_accuracies": timing["accs"],
        "grad_norms": clock.grad_norms,
        "lrs": clock.lrs,
        "ref_seconds": timing["ref_seconds"],
        "ref_cpu_seconds": timing["ref_cpu_seconds"],
        "ref_pairs": timing["ref_pairs"],
        "ref_first_pairs": timing["ref_first_pairs"],
        **clock.memory(),
        **h.footprint(list(trainer.model.parameters()), trainer.optimizer),
    }


if __name__ == "__main__":
    sys.exit(main())
