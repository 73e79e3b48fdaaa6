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
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    environment,
    fmt_bytes,
    format_table,
    free_port,
    lifetime_peak_rss_bytes,
    optimizer_states,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    run_worker,
    set_torch_threads,
    tensor_bytes,
    thread_env,
    trl_matched_args,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]

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
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.models.tiny import build_tiny_model

    model_dir = work / "tiny"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=args.seed)
    tokenizer = load_tokenizer(model_dir)
    pairs, report = load_preference_examples(
        [str(EMBEDDED_DPO)], tokenizer, max_seq_len=args.max_len, cache_dir=work / "cache"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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
    data_path = work / "pairs.json"
    data_path.write_text(json.dumps(flat))
    G = args.global_batch
    tokens = [
        sum(len(q["chosen_input_ids"]) + len(q["rejected_input_ids"]) for q in flat[s * G : (s + 1) * G])
        for s in range(total)
    ]
    return {
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "pad_id": pad_id,
        "max_len": args.max_len,
        "global_batch": G,
        "micro_batch": args.micro_batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "lr": args.lr,
        "beta": args.beta,
        "seed": args.seed,
        "threads": args.threads,
        "work_dir": str(work),
        "data": {
            "pairs_in_file": len(pairs),
            "pairs_trained": len(flat),
            "unique_pairs_trained": len({q["id"] for q in flat}),
            "longest_sequence": max(
                max(len(q["chosen_input_ids"]), len(q["rejected_input_ids"])) for q in flat
            ),
            "mean_sequence": sum(len(q["chosen_input_ids"]) + len(q["rejected_input_ids"]) for q in flat)
            / (2 * len(flat)),
            "unpadded_tokens_per_step": tokens,
            "report": report.summary(),
        },
    }


def launch(side: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path = work / f"spec_{side}.json"
    spec_path.write_text(json.dumps({**spec, "side": side}))
    result = work / f"result_{side}.json"
    env = thread_env(spec["threads"])
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = "1"
    env["HF_DATASETS_CACHE"] = str(work / f"hf_datasets_{side}")  # no cross-run reference cache hits
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--worker", side, "--spec", str(spec_path), "--result", str(result)),
    ]
    print(f"[bench_dpo] running {side} ...", flush=True)
    load_before = os.getloadavg()[0]
    out = run_worker(cmd, result, env=env, timeout=900, log_path=work / f"log_{side}.txt")
    out["loadavg_1min"] = [load_before, os.getloadavg()[0]]  # machine load around the worker
    return out


def summarize(res: dict[str, Any], warmup: int, steps: int, global_batch: int) -> dict[str, Any]:
    def span(ends: list[float], start: float) -> tuple[float, list[float]]:
        first = ends[warmup - 1] if warmup > 0 else start
        return ends[warmup + steps - 1] - first, [b - a for a, b in zip([start, *ends[:-1]], ends)]

    elapsed, per_step = span(res["step_end_times"], res["loop_start"])
    cpu, cpu_per_step = span(res["step_end_cpu_times"], res["cpu_start"])
    pairs = global_batch * steps
    return {
        "pairs_per_s": pairs / elapsed,
        "pairs_per_cpu_s": pairs / cpu,
        "seconds_per_step": elapsed / steps,
        "cpu_seconds_per_step": cpu / steps,
        "timed_seconds": elapsed,
        "step_seconds": per_step,
        "step_cpu_seconds": cpu_per_step,
        "first_loss": res["losses"][0],
        "final_loss": res["losses"][-1],
        "ref_pairs_per_s": res["ref_pairs"] / res["ref_seconds"],
    }


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    p.add_argument("--global-batch", type=int, default=16, help="pairs per optimizer step")
    p.add_argument("--micro-batch", type=int, default=8, help="pairs per forward/backward")
    p.add_argument("--max-len", type=int, default=256, help="max tokens per sequence (none is longer here)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each worker")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each side keeps its best")
    p.add_argument("--sides", default="ours_sep,ours_cat,trl", help="comma-separated subset of the sides")
    p.add_argument("--work-dir", default=None, help="scratch dir (default: a temp dir)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dpo.json"))
    p.add_argument("--worker", choices=list(SIDE_LABELS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        result = worker_ours(spec) if args.worker.startswith("ours") else worker_trl(spec)
        write_json(args.result, result)
        return 0

    if args.global_batch % args.micro_batch:
        p.error("--global-batch must be a multiple of --micro-batch")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDE_LABELS]
    if unknown:
        p.error(f"unknown sides {unknown}; choose from {list(SIDE_LABELS)}")
    import tempfile

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_dpo_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = prepare(args, work)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for _ in range(args.repeats):  # rounds interleave the sides, so load drift hits each side alike
        for s in sides:
            res = launch(s, spec, work)
            runs[s].append({**res, **summarize(res, args.warmup, args.steps, args.global_batch)})
    # With repeats, each side keeps its run with the least CPU time per step (the least disturbed one).
    results = {s: min(runs[s], key=lambda r: r["cpu_seconds_per_step"]) for s in sides}
    if args.repeats > 1:
        for s in sides:
            results[s]["all_runs"] = [
                {k: r[k] for k in ("pairs_per_s", "cpu_seconds_per_step", "peak_rss_train", "loadavg_1min")}
                for r in runs[s]
            ]

    total = args.warmup + args.steps
    table_rows = [
        ["pairs/s (wall)", *(f"{results[s]['pairs_per_s']:.2f}" for s in sides)],
        ["s/step (wall, mean)", *(f"{results[s]['seconds_per_step']:.2f}" for s in sides)],
        ["pairs/CPU-s", *(f"{results[s]['pairs_per_cpu_s']:.2f}" for s in sides)],
        ["CPU-s/step (mean)", *(f"{results[s]['cpu_seconds_per_step']:.2f}" for s in sides)],
        ["peak RSS, training loop", *(fmt_bytes(results[s]["peak_rss_train"]) for s in sides)],
        ["RSS before training", *(fmt_bytes(results[s]["rss_before_train"]) for s in sides)],
        [
            "peak - before (loop growth)",
            *(fmt_bytes(results[s]["peak_rss_train"] - results[s]["rss_before_train"]) for s in sides),
        ],
        ["peak RSS, whole worker", *(fmt_bytes(results[s]["peak_rss_lifetime"]) for s in sides)],
        ["ref precompute s (wall)", *(f"{results[s]['ref_seconds']:.2f}" for s in sides)],
        ["ref precompute CPU-s", *(f"{results[s]['ref_cpu_seconds']:.2f}" for s in sides)],
        ["ref precompute pairs/s", *(f"{results[s]['ref_pairs_per_s']:.1f}" for s in sides)],
        ["params (count)", *(f"{results[s]['param_count']:,}" for s in sides)],
        ["optimizer state bytes", *(fmt_bytes(results[s]["optimizer_state_bytes"]) for s in sides)],
        ["loss step 1", *(f"{results[s]['first_loss']:.6f}" for s in sides)],
        [f"loss step {total}", *(f"{results[s]['final_loss']:.6f}" for s in sides)],
        ["grad norm step 1", *(f"{results[s]['grad_norms'][0]:.6f}" for s in sides)],
        [
            f"reward acc step {total} (own def.)",
            *(f"{results[s]['reward_accuracies'][-1]:.3f}" for s in sides),
        ],
        [
            "1-min load avg before/after",
            *("/".join(f"{x:.1f}" for x in results[s]["loadavg_1min"]) for s in sides),
        ],
        ["worker wall s (incl. imports)", *(f"{results[s]['wall_seconds']:.1f}" for s in sides)],
    ]
    base = sides[0]
    for s in sides:
        results[s]["loss_max_abs_diff_vs_" + base] = max(
            abs(a - b) for a, b in zip(results[s]["losses"], results[base]["losses"])
        )
    for s in sides:
        results[s]["ref_logp_max_abs_diff_vs_" + base] = max(
            abs(a - b)
            for k in ("chosen", "rejected")
            for a, b in zip(results[s]["ref_first_pairs"][k], results[base]["ref_first_pairs"][k])
        )
    table_rows.append(
        [
            f"max |ref logp - {base}| (4 pairs)",
            *(f"{results[s]['ref_logp_max_abs_diff_vs_' + base]:.1e}" for s in sides),
        ]
    )
    table_rows.append(
        [
            f"max |loss - {base}| (all steps)",
            *(f"{results[s]['loss_max_abs_diff_vs_' + base]:.1e}" for s in sides),
        ]
    )
    table = format_table(table_rows, ["", *sides])
    settings = {
        k: spec[k]
        for k in (
            "global_batch",
            "micro_batch",
            "warmup",
            "steps",
            "lr",
            "beta",
            "max_len",
            "seed",
            "threads",
        )
    }
    settings["repeats"] = args.repeats
    settings["loss"] = "length-normalized DPO (ours dpo_norm / TRL sigmoid_norm), mean over pairs"
    settings["reference"] = "precomputed before training (forward-only), excluded from step timings"
    settings["optimizer"] = "AdamW betas=(0.9,0.999) eps=1e-8 wd=0, constant LR, clip 1.0, fp32"
    out = {
        "benchmark": "dpo_step_cpu",
        "sides": {s: SIDE_LABELS[s] for s in sides},
        "settings": settings,
        "data": spec["data"],
        "results": results,
        "table": table,
        "notes": NOTES,
        "environment": environment(),
        "total_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, out)
    print(
        f"\nDPO step on CPU: {args.global_batch} pairs per step (micro-batch {args.micro_batch}), "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.threads} threads, LR {args.lr}, "
        f"beta {args.beta}, reference precomputed\n"
    )
    for s in sides:
        print(f"  {s}: {SIDE_LABELS[s]}")
    print()
    print(table)
    print(f"\nwrote {args.out}  (total {out['total_seconds']:.0f}s)")
    return 0


# --------------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------------


def _load_pairs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(Path(spec["data_path"]).read_text())


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    set_torch_threads(int(os.environ.get("OMP_NUM_THREADS", spec["threads"])))
    import torch

    from megatron_tulu.algorithms.dpo import (
        forward_pairs,
        make_batch_builder,
        make_forward_step,
        reference_stats,
    )
    from megatron_tulu.algorithms.loop import split_for_rank
    from megatron_tulu.algorithms.ref_cache import compute_reference_logps
    from megatron_tulu.config.load import load_config
    from megatron_tulu.config.schema import DPORunConfig
    from megatron_tulu.data.preference import PrefExample
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
    from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
    from megatron_tulu.engine.train_step import prepare_model_for_training, train_step
    from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf

    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    mode = "separate" if spec["side"] == "ours_sep" else "concatenated"
    total = spec["warmup"] + spec["steps"]
    G, mb = spec["global_batch"], spec["micro_batch"]
    cfg = load_config(
        [
            f"train.output_dir={spec['work_dir']}/{spec['side']}",
            f"model.hf_path={spec['model_dir']}",
            f"train.seq_length={spec['max_len']}",
            f"data.max_seq_len={spec['max_len']}",
            f"train.global_batch_size={G}",
            f"train.micro_batch_size={mb}",
            f"train.train_iters={total}",
            f"train.seed={spec['seed']}",
            f"optimizer.lr={spec['lr']}",
            "optimizer.min_lr=0.0",
            "optimizer.warmup_ratio=0.0",
            "optimizer.lr_decay_style=constant",
            "optimizer.weight_decay=0.0",
            "optimizer.clip_grad=1.0",
            "dpo.loss=dpo_norm",
            f"dpo.beta={spec['beta']}",
            f"dpo.forward_mode={mode}",
        ],
        config_name="dpo",
        schema=DPORunConfig,
    )
    cfg.model = dataclasses.replace(model_config_from_hf(spec["model_dir"]), name=cfg.model.name)
    info = init_parallel(cfg.model, cfg.parallel, seed=cfg.train.seed)
    chunks = build_model(cfg.model, cfg.parallel, cfg.precision)
    load_hf_weights(chunks, cfg.model, spec["model_dir"])
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
        for q in _load_pairs(spec)
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

    optimizer = build_optimizer(chunks, cfg.optimizer, cfg.parallel, cfg.precision)
    scheduler = build_scheduler(optimizer, cfg.optimizer, total)
    prepare_model_for_training(chunks, optimizer)
    build = make_batch_builder(pairs, mode, pad_id, None, ref)
    forward_step = make_forward_step(cfg, cfg.model.vocab_size)
    num_mb = G // (mb * info.dp)
    rows_per_mb = mb * (2 if mode == "concatenated" else 1)

    rss_before = rss_bytes()
    reset_peak_rss()
    ends, cpu_ends, losses, accs, grad_norms = [], [], [], [], []
    loop_start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(total):
        rows = list(range(step * G, (step + 1) * G))
        micro = [build(idx) for idx in split_for_rank(rows, info.dp, info.dp_rank, mb)]
        seq_len = max(int(v.shape[-1]) for k, v in micro[0].items() if k.endswith("tokens"))
        result = train_step(
            forward_step,
            iter(micro),
            chunks,
            optimizer,
            scheduler,
            num_microbatches=num_mb,
            seq_length=seq_len,
            micro_batch_size=rows_per_mb,
        )
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        losses.append(result.metrics["loss"])
        accs.append(result.metrics.get("reward_accuracy", float("nan")))
        grad_norms.append(result.grad_norm)
    peak_train = peak_rss_bytes()

    params = [q for c in chunks for q in c.parameters()]
    out = {
        "forward_mode": mode,
        "threads": torch.get_num_threads(),
        "loop_start": loop_start,
        "step_end_times": ends,
        "cpu_start": cpu_start,
        "step_end_cpu_times": cpu_ends,
        "losses": losses,
        "reward_accuracies": accs,
        "grad_norms": grad_norms,
        "ref_seconds": ref_seconds,
        "ref_cpu_seconds": ref_cpu,
        "ref_pairs": len(pairs),
        "ref_first_pairs": {
            k: ref[k][:4].tolist() for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")
        },
        "rss_before_train": rss_before,
        "peak_rss_train": peak_train,
        "peak_rss_lifetime": lifetime_peak_rss_bytes(),
        "param_count": sum(q.numel() for q in params),
        "param_bytes": tensor_bytes(params),
        "optimizer_state_bytes": tensor_bytes(optimizer_states(optimizer)),
    }
    destroy_parallel()
    return out


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    threads = int(os.environ.get("OMP_NUM_THREADS", spec["threads"]))
    set_torch_threads(threads)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
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
        for q in _load_pairs(spec)
    ]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = spec["pad_id"]
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    model.config.use_cache = False

    timing: dict[str, Any] = {
        "ends": [],
        "cpu_ends": [],
        "mb_losses": [],
        "losses": [],
        "accs": [],
        "grad_norms": [],
        "lrs": [],
    }

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
            timing["accs_mb"] = timing.get("accs_mb", []) + [self._metrics["train"]["rewards/accuracies"][-1]]
            return loss

    config = DPOConfig(
        **trl_matched_args(spec, total, mb, G),
        max_length=spec["max_len"],
        loss_type=["sigmoid_norm"],
        beta=spec["beta"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=mb,
    )

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timing["rss_before"] = rss_bytes()
            reset_peak_rss()
            timing["loop_start"], timing["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            timing["ends"].append(time.perf_counter())
            timing["cpu_ends"].append(time.process_time())
            mbs, timing["mb_losses"] = timing["mb_losses"], []
            timing["losses"].append(sum(mbs) / len(mbs))  # equal micro-batches: mean = global-batch mean
            accs, timing["accs_mb"] = timing.get("accs_mb", []), []
            timing["accs"].append(sum(accs) / max(1, len(accs)))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                timing["grad_norms"].append(float(logs.get("grad_norm", float("nan"))))
                timing["lrs"].append(float(logs.get("learning_rate", float("nan"))))

    trainer = BenchDPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()]
    )
    trainer.train()
    peak_train = peak_rss_bytes()

    params = list(trainer.model.parameters())
    return {
        "threads": torch.get_num_threads(),
        "attention": f"transformers {model.config._attn_implementation}, padding mask",
        "loop_start": timing["loop_start"],
        "step_end_times": timing["ends"],
        "cpu_start": timing["cpu_start"],
        "step_end_cpu_times": timing["cpu_ends"],
        "losses": timing["losses"],
        "reward_accuracies": timing["accs"],
        "grad_norms": timing["grad_norms"],
        "lrs": timing["lrs"],
        "ref_seconds": timing["ref_seconds"],
        "ref_cpu_seconds": timing["ref_cpu_seconds"],
        "ref_pairs": timing["ref_pairs"],
        "ref_first_pairs": timing["ref_first_pairs"],
        "rss_before_train": timing["rss_before"],
        "peak_rss_train": peak_train,
        "peak_rss_lifetime": lifetime_peak_rss_bytes(),
        "param_count": sum(q.numel() for q in params),
        "param_bytes": tensor_bytes(params),
        "optimizer_state_bytes": tensor_bytes(optimizer_states(trainer.optimizer)),
    }


if __name__ == "__main__":
    sys.exit(main())
