"""Fused vs unfused vocab-parallel log-prob + backward on CPU: peak memory, tokens/s, agreement.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_cpu.json
        [--vocab 128256] [--tokens 4096] [--hidden 4096] [--dtype fp32] [--threads 2]

Each side runs in its own subprocess (``--role fused|unfused``) on identical seeded inputs
(hidden [tokens, hidden], output weight [vocab, hidden], targets), does one forward and one
backward of ``sum(log p(target))`` and reports:

- peak memory: the rise of the process's peak RSS (``VmHWM``, reset after the inputs are
  allocated and touched) during forward + backward. The weight gradient ([vocab, hidden], the
  same size for both sides, and in Megatron training a tensor that is accumulated into the
  pre-allocated ``main_grad`` buffer) is reported separately: ``*_peak_bytes`` exclude it,
  ``*_peak_bytes_incl_weight_grad`` do not;
- tokens/s of forward + backward;
- log-probs, the hidden-state gradient and a fixed sample of weight-gradient rows (every target
  row plus a strided sample), from which the controller computes ``max_rel_err`` (max |a-b| /
  max |b| over those tensors, unfused as reference).

unfused = :func:`megatron_tulu.kernels.unfused_vocab_parallel_log_probs` (full logits kept by
autograd: the trainers' path with ``train.fused_log_probs=false``); fused =
:func:`fused_vocab_parallel_log_probs` (chunked, recomputed in backward; the PyTorch
implementation, as on CPU).

``--trainer`` measures the same choice one level up, through the SFT trainer's own
``forward_step`` and ``train_step`` on a real Megatron-Core ``GPTModel`` (one layer, hidden
``--trainer-hidden``, vocab ``--vocab``, ``--tokens`` tokens in one packed row, fp32, TP1): after
one warm-up step (the optimizer state exists) the peak-RSS rise of a second step with
``train.fused_log_probs`` true vs false, step seconds, and the loss and gradient agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    environment,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    run_worker,
    set_torch_threads,
    thread_env,
)

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def make_inputs(vocab: int, tokens: int, hidden: int, dtype_name: str):
    import torch

    dtype = getattr(torch, DTYPES[dtype_name])
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g).to(dtype).requires_grad_()
    w = torch.empty(vocab, hidden, dtype=dtype)
    for a in range(0, vocab, 8192):  # chunked init: no second full-size temporary
        b = min(a + 8192, vocab)
        w[a:b] = torch.randn(b - a, hidden, generator=g) / hidden**0.5
    w.requires_grad_()
    t = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, t


def sample_rows(vocab: int, targets) -> list[int]:
    rows = set(targets[:256].tolist()) | set(range(0, vocab, max(1, vocab // 512)))
    return sorted(rows)


def worker(args: argparse.Namespace) -> None:
    set_torch_threads(args.threads)
    import torch
    from megatron_tulu.kernels import (
        chunk_tokens_for,
        fused_vocab_parallel_log_probs,
        unfused_vocab_parallel_log_probs,
    )

    h, w, t = make_inputs(args.vocab, args.tokens, args.hidden, args.dtype)
    base_rss = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    if args.role == "fused":
        chunk = args.chunk_tokens or chunk_tokens_for(args.vocab)
        logp = fused_vocab_parallel_log_probs(
            h, w, t, args.vocab, tp_group=None, chunk_tokens=chunk, impl="torch"
        )
    else:
        chunk = None
        logp = unfused_vocab_parallel_log_probs(h, w, t, args.vocab, tp_group=None)
    fwd = time.perf_counter() - start
    logp.sum().backward()
    total = time.perf_counter() - start
    peak = peak_rss_bytes() - base_rss
    weight_grad_bytes = w.grad.numel() * w.grad.element_size()
    rows = sample_rows(args.vocab, t)
    torch.save({"logp": logp.detach(), "grad_h": h.grad, "grad_w_rows": w.grad[rows].clone()}, args.tensors)
    Path(args.result).write_text(
        json.dumps(
            {
                "role": args.role,
                "chunk_tokens": chunk,
                "peak_bytes_incl_weight_grad": peak,
                "weight_grad_bytes": weight_grad_bytes,
                "peak_bytes": peak - weight_grad_bytes,
                "forward_seconds": fwd,
                "forward_backward_seconds": total,
                "tokens_per_second": args.tokens / total,
                "inputs_rss_bytes": base_rss,
            }
        )
    )


def trainer_worker(args: argparse.Namespace) -> None:
    """One SFT step through the trainer's forward_step, fused or not (see the module doc)."""
    set_torch_threads(args.threads)
    import torch
    from megatron.core import parallel_state

    from megatron_tulu.algorithms.sft import make_forward_step
    from megatron_tulu.config.schema import ModelConfig, OptimizerConfig, ParallelConfig, PrecisionConfig
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.optimizer import build_optimizer
    from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
    from megatron_tulu.engine.train_step import prepare_model_for_training, train_step

    hidden = args.trainer_hidden
    cfg = ModelConfig(
        name="bench",
        num_layers=1,
        hidden_size=hidden,
        ffn_hidden_size=2 * hidden,
        num_attention_heads=hidden // 128,
        num_query_groups=hidden // 128,
        kv_channels=128,
        vocab_size=args.vocab,
        max_position_embeddings=args.tokens,
        make_vocab_size_divisible_by=128,
    )
    parallel, precision = ParallelConfig(), PrecisionConfig()
    init_parallel(cfg, parallel, seed=0)
    chunks = build_model(cfg, parallel, precision)
    optimizer = build_optimizer(
        chunks, OptimizerConfig(lr=0.0, min_lr=0.0, clip_grad=1e9), parallel, precision
    )
    prepare_model_for_training(chunks, optimizer)
    step_fn = make_forward_step(args.vocab, "mean", packing=True, use_thd=False, fused=args.role == "fused")
    g = torch.Generator().manual_seed(1)
    n = args.tokens
    tokens = torch.randint(0, args.vocab, (1, n), generator=g)
    half = n // 2  # two documents in the row: the packed (block-causal) path the trainer takes
    batch = {
        "tokens": tokens,
        "labels": torch.roll(tokens, -1, dims=1),
        "loss_mask": torch.ones(1, n),
        "position_ids": torch.cat([torch.arange(half), torch.arange(n - half)]).unsqueeze(0),
        "document_ids": torch.cat([torch.zeros(half), torch.ones(n - half)]).long().unsqueeze(0),
    }

    def one_step():
        return train_step(
            step_fn,
            iter([batch]),
            chunks,
            optimizer,
            None,
            num_microbatches=1,
            seq_length=n,
            micro_batch_size=1,
        )

    one_step()  # warm-up: Adam's state is allocated here, outside the measured step (lr 0: same weights)
    base_rss = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    res = one_step()
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes() - base_rss
    grads = {name: p_.main_grad.detach().clone() for name, p_ in chunks[0].named_parameters()}
    torch.save({"grads": grads}, args.tensors)
    Path(args.result).write_text(
        json.dumps(
            {
                "role": args.role,
                "step_peak_bytes": peak,
                "step_seconds": seconds,
                "tokens_per_second": n / seconds,
                "loss": res.metrics["loss_per_token"],
                "model_rss_bytes": base_rss,
                "tp": parallel_state.get_tensor_model_parallel_world_size(),
            }
        )
    )
    destroy_parallel()


def trainer_controller(args: argparse.Namespace) -> dict:
    extra = [
        "--trainer",
        "--trainer-hidden",
        str(args.trainer_hidden),
    ]  # a world of one: init_parallel picks its port
    results, tensors = run_roles(args, extra, "trainer step, ")
    grads = {role: t["grads"] for role, t in tensors.items()}
    fused, unfused = results["fused"], results["unfused"]
    grad_err = max(rel_err(grads["fused"][k], grads["unfused"][k]) for k in grads["unfused"])
    return {
        "trainer_fused_step_peak_bytes": fused["step_peak_bytes"],
        "trainer_unfused_step_peak_bytes": unfused["step_peak_bytes"],
        "trainer_peak_ratio_fused_over_unfused": fused["step_peak_bytes"] / unfused["step_peak_bytes"],
        "trainer_fused_tokens_per_second": fused["tokens_per_second"],
        "trainer_unfused_tokens_per_second": unfused["tokens_per_second"],
        "trainer_loss_rel_err": abs(fused["loss"] - unfused["loss"]) / abs(unfused["loss"]),
        "trainer_grad_max_rel_err": grad_err,
        "shape": {
            "vocab": args.vocab,
            "tokens": args.tokens,
            "hidden": args.trainer_hidden,
            "layers": 1,
            "dtype": "fp32",
            "tp": 1,
            "path": "SFT forward_step + train_step (packed row, 2 documents)",
        },  # fmt: skip
        "threads": args.threads,
        "fused": fused,
        "unfused": unfused,
        "peak_definition": "rise of peak RSS (VmHWM) during the second optimizer step (after a warm-up step)",
        "environment": environment(),
    }


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def run_roles(args: argparse.Namespace, extra: list[str], label: str = "") -> tuple[dict, dict]:
    """Run this script as the fused and the unfused worker; (their JSON results, their tensors)."""
    import torch

    results, tensors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for role in ("fused", "unfused"):
            res_path, ten_path = Path(tmp) / f"{role}.json", Path(tmp) / f"{role}.pt"
            cmd = [
                sys.executable, __file__, "--role", role, "--result", str(res_path), "--tensors", str(ten_path),
                "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--threads", str(args.threads), *extra,
            ]  # fmt: skip
            print(f"running {label}{role} ...", flush=True)
            results[role] = run_worker(
                cmd, res_path, env=thread_env(args.threads), timeout=3600, log_path=Path(tmp) / f"{role}.log"
            )
            tensors[role] = torch.load(ten_path)
    return results, tensors


def controller(args: argparse.Namespace) -> dict:
    extra = ["--hidden", str(args.hidden), "--dtype", args.dtype]
    if args.chunk_tokens:
        extra += ["--chunk-tokens", str(args.chunk_tokens)]
    results, tensors = run_roles(args, extra)
    errs = {k: rel_err(tensors["fused"][k], tensors["unfused"][k]) for k in tensors["unfused"]}
    fused, unfused = results["fused"], results["unfused"]
    out = {
        "fused_peak_bytes": fused["peak_bytes"],
        "unfused_peak_bytes": unfused["peak_bytes"],
        "max_rel_err": max(errs.values()),
        "peak_ratio_fused_over_unfused": fused["peak_bytes"] / unfused["peak_bytes"],
        "fused_peak_bytes_incl_weight_grad": fused["peak_bytes_incl_weight_grad"],
        "unfused_peak_bytes_incl_weight_grad": unfused["peak_bytes_incl_weight_grad"],
        "weight_grad_bytes": fused["weight_grad_bytes"],
        "fused_tokens_per_second": fused["tokens_per_second"],
        "unfused_tokens_per_second": unfused["tokens_per_second"],
        "rel_err": errs,
        "shape": {"vocab": args.vocab, "tokens": args.tokens, "hidden": args.hidden, "dtype": args.dtype},
        "threads": args.threads,
        "fused": fused,
        "unfused": unfused,
        "peak_definition": (
            "rise of peak RSS (VmHWM) over the allocated inputs during one forward+backward; "
            "*_peak_bytes exclude the [vocab, hidden] weight gradient both sides produce"
        ),
        "environment": environment(),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON result file")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-tokens", type=int, default=0, help="fused chunk size (default: the library's)")
    p.add_argument("--trainer", action="store_true", help="one SFT trainer step instead of the kernel")
    p.add_argument("--trainer-hidden", type=int, default=1024, help="hidden size of the --trainer model")
    p.add_argument("--role", choices=["fused", "unfused"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--tensors", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        (trainer_worker if args.trainer else worker)(args)
        return
    if not args.out:
        p.error("--out FILE is required")
    gib = 2**30
    if args.trainer:
        out = trainer_controller(args)
        print(
            f"SFT trainer step: 1-layer GPTModel, hidden {args.trainer_hidden}, vocab {args.vocab}, "
            f"{args.tokens} tokens (fp32, TP1, {args.threads} threads)\n"
            f"{'train.fused_log_probs':24}{'step peak (GiB)':>17}{'tokens/s':>11}\n"
            f"{'true':24}{out['trainer_fused_step_peak_bytes'] / gib:17.3f}"
            f"{out['trainer_fused_tokens_per_second']:11.1f}\n"
            f"{'false':24}{out['trainer_unfused_step_peak_bytes'] / gib:17.3f}"
            f"{out['trainer_unfused_tokens_per_second']:11.1f}\n"
            f"fused / unfused step peak: {out['trainer_peak_ratio_fused_over_unfused']:.3f}   "
            f"loss rel err {out['trainer_loss_rel_err']:.1e}   grad max rel err {out['trainer_grad_max_rel_err']:.1e}"
        )
    else:
        out = controller(args)
        print(
            f"vocab {args.vocab} x tokens {args.tokens} x hidden {args.hidden} ({args.dtype}, {args.threads} threads)\n"
            f"{'':10}{'peak (GiB)':>12}{'+ weight grad':>15}{'tokens/s':>11}\n"
            f"{'fused':10}{out['fused_peak_bytes'] / gib:12.3f}{out['fused_peak_bytes_incl_weight_grad'] / gib:15.3f}"
            f"{out['fused_tokens_per_second']:11.1f}\n"
            f"{'unfused':10}{out['unfused_peak_bytes'] / gib:12.3f}{out['unfused_peak_bytes_incl_weight_grad'] / gib:15.3f}"
            f"{out['unfused_tokens_per_second']:11.1f}\n"
            f"fused / unfused peak: {out['peak_ratio_fused_over_unfused']:.3f}   max rel err: {out['max_rel_err']:.2e}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
