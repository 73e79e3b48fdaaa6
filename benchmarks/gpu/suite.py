"""Every GPU measurement of the kernels issue in one process; correctness only on CPU.

    python benchmarks/gpu/suite.py --out-dir benchmarks/results/gpu [--only gemm,fused,quant,mfu]

(normally through ``benchmarks/gpu/run_all.sh``, which sets the paths and, on CPU, the Triton
interpreter). Needs torch (+ Triton on GPU); no vLLM, no Transformer Engine, no network. The
train-step MFU section also needs megatron-core (pure Python, carried next to the tree by
``run_all.sh`` when the machine lacks it); without it that section is skipped and says so.

On CUDA it writes one JSON per section to ``--out-dir``:

- ``gemm.json``: bf16 vs FP8 ``scaled_mm`` (tensor-, row-, block-scaled where this torch has
  them) on the TP-sharded GEMM shapes of Llama 3.1 8B (TP1), 70B and 405B (TP8), TFLOP/s and %
  of the chip's dense peak, plus each FP8 variant's error against the bf16 product;
- ``fused_logprob.json``: fused vs unfused log-prob + backward at vocab 128,256 (one TP shard at
  TP1 and TP8), 4,096 tokens, hidden 4,096, bf16: time and peak memory, and agreement;
- ``fp8_quant.json``: the blockwise FP8 quantize / dequantize kernels' GB/s vs the chip's memory
  bandwidth, and byte-equality of the Triton kernel with the PyTorch reference on the GPU;
- ``mfu.json``: the Megatron engine's train step (our build_model / optimizer / train_step, local
  layer spec, bf16) on a Llama-3.1-8B-shaped slice (4 layers, seq 4096): tokens/s and MFU;
- ``resume.json``: a bf16 checkpoint resume through the DistributedOptimizer (tiny model): AdamW
  step counts checked, loss and weights against the uninterrupted step reported.

On CPU it runs every section's correctness checks at small sizes (Triton kernels under
TRITON_INTERPRET=1) and writes only ``cpu_correctness.json``: no speed number comes from a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]

# Dense (no sparsity) peaks and HBM bandwidth from NVIDIA's data sheets, by device-name substring.
CHIPS = {
    "H200": {"bf16_tflops": 989.0, "fp8_tflops": 1979.0, "hbm_gbps": 4800.0},
    "H100 NVL": {"bf16_tflops": 835.0, "fp8_tflops": 1671.0, "hbm_gbps": 3900.0},
    "H100 PCIe": {"bf16_tflops": 756.0, "fp8_tflops": 1513.0, "hbm_gbps": 2000.0},
    "H100": {"bf16_tflops": 989.0, "fp8_tflops": 1979.0, "hbm_gbps": 3350.0},
}

LLAMA = {  # hidden, ffn, heads, kv heads, head dim, vocab
    "llama3.1_8b": (4096, 14336, 32, 8, 128, 128256),
    "llama3.1_70b": (8192, 28672, 64, 8, 128, 128256),
    "llama3.1_405b": (16384, 53248, 128, 8, 128, 128256),
}


def load_kernels() -> Any:
    """``megatron_tulu.kernels``; from the source tree when the package is not installed."""
    try:
        import megatron_tulu.kernels as k

        return k
    except ImportError:
        pass
    sys.path.insert(0, str(REPO))
    import megatron_tulu  # noqa: F401  (the parent package, from the tree)

    spec = importlib.util.spec_from_file_location(
        "megatron_tulu.kernels",
        REPO / "kernels" / "__init__.py",
        submodule_search_locations=[str(REPO / "kernels")],
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["megatron_tulu.kernels"] = mod
    spec.loader.exec_module(mod)
    return mod


def chip_info() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"name": "cpu", "peaks": None}
    name = torch.cuda.get_device_name()
    peaks = next((v for k, v in CHIPS.items() if k in name), None)
    return {"name": name, "capability": list(torch.cuda.get_device_capability()), "peaks": peaks}


def timed(fn: Callable[[], Any], *, min_seconds: float = 0.2, max_iters: int = 50, warmup: int = 3) -> float:
    """Median seconds per call (CUDA events on GPU, wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    cuda = torch.cuda.is_available()
    times: list[float] = []
    total = 0.0
    while len(times) < max_iters and (total < min_seconds or len(times) < 3):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            dt = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    times.sort()
    return times[len(times) // 2]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


class Checks:
    """Correctness results; any failure makes the suite exit non-zero."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, **detail: Any) -> None:
        self.items.append({"check": name, "ok": bool(ok), **detail})
        print(f"  [{'ok' if ok else 'FAIL'}] {name} {detail if detail else ''}", flush=True)

    @property
    def ok(self) -> bool:
        return all(i["ok"] for i in self.items)


# ----------------------------------------------------------------------------------------------
# GEMM: bf16 vs FP8 scaled_mm
# ----------------------------------------------------------------------------------------------


def gemm_shapes(tokens: int) -> list[dict[str, Any]]:
    """(M, N, K) of each linear of one layer + LM head, per TP rank (column- / row-parallel)."""
    out = []
    for model, tp in (("llama3.1_8b", 1), ("llama3.1_70b", 8), ("llama3.1_405b", 8)):
        h, ffn, heads, kv, hd, vocab = LLAMA[model]
        for name, n, k in (
            ("qkv", (heads + 2 * kv) * hd // tp, h),
            ("proj", h, heads * hd // tp),
            ("fc1", 2 * ffn // tp, h),
            ("fc2", h, ffn // tp),
            ("lm_head", -(-vocab // (128 * tp)) * 128, h),
        ):
            out.append({"model": model, "tp": tp, "gemm": name, "M": tokens, "N": n, "K": k})
    return out


def _quant_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax().float().clamp(min=1e-12)
    scale = 448.0 / amax
    return (x.float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale.reciprocal()


def _quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
    scale = 448.0 / amax
    return (x.float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale.reciprocal()


def _quant_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x.shape
    g = x.float().reshape(m, k // 128, 128)
    amax = g.abs().amax(dim=-1).clamp(min=1e-12)
    scale = 448.0 / amax
    q = (g * scale.unsqueeze(-1)).clamp(-448, 448).reshape(m, k).to(torch.float8_e4m3fn)
    return q, scale.reciprocal()


def fp8_variants(
    kernels: Any,
) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Callable[[], torch.Tensor]]]:
    """name -> prepare(a [M,K] bf16, w [N,K] bf16) -> a zero-arg FP8 GEMM returning [M, N] bf16."""
    F = torch.nn.functional
    v2 = _has_scaled_mm_v2()

    def mm(a8, b8t, sa, sb, recipe_a=None, recipe_b=None):
        if v2 and recipe_a is not None:
            return F.scaled_mm(a8, b8t, sa, recipe_a, sb, recipe_b, output_dtype=torch.bfloat16)
        return torch._scaled_mm(a8, b8t, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    def tensorwise(a, w):
        (a8, sa), (w8, sw) = _quant_tensor(a), _quant_tensor(w)
        ra = rb = F.ScalingType.TensorWise if v2 else None
        return lambda: mm(a8, w8.t(), sa, sw, ra, rb)

    def rowwise(a, w):
        (a8, sa), (w8, sw) = _quant_rows(a), _quant_rows(w)
        ra = rb = F.ScalingType.RowWise if v2 else None
        return lambda: mm(a8, w8.t(), sa, sw.t(), ra, rb)

    def blockwise(a, w):
        """DeepSeek-V3 / vLLM block FP8: activations 1x128 groups, weights 128x128 blocks (ours)."""
        if not v2:
            raise RuntimeError("this torch has no torch.nn.functional.scaled_mm (block scaling)")
        n, k = w.shape
        if k % 128 or n % 128:
            raise RuntimeError(f"block scaling needs N and K multiples of 128, got N={n} K={k}")
        a8, sa = _quant_1x128(a)
        w8, sw = kernels.blockwise_fp8_quantize(w)  # [N, K] fp8, scale_inv [N/128, K/128]
        kb = k // 128
        l4 = -(-kb // 4) * 4
        sw_pad = torch.zeros(n // 128, l4, dtype=torch.float32, device=w.device)
        sw_pad[:, :kb] = sw
        sa_t = sa.t().contiguous().t()  # [M, K/128], M-major as cuBLASLt wants
        return lambda: F.scaled_mm(
            a8, w8.t(), sa_t, F.ScalingType.BlockWise1x128, sw_pad.t(), F.ScalingType.BlockWise128x128,
            output_dtype=torch.bfloat16,
        )  # fmt: skip

    return {"fp8_tensorwise": tensorwise, "fp8_rowwise": rowwise, "fp8_block128": blockwise}


def section_gemm(kernels: Any, checks: Checks, measure: bool) -> dict[str, Any]:
    dev = "cuda" if measure else "cpu"
    peaks = chip_info()["peaks"]
    variants = fp8_variants(kernels)
    shapes = (
        gemm_shapes(4096)
        if measure
        else [{"model": "small", "tp": 1, "gemm": "x", "M": 64, "N": 256, "K": 256}]
    )
    rows = []
    for s in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(s["M"], s["K"], device=dev, generator=g, dtype=torch.float32).to(torch.bfloat16)
        w = (torch.randn(s["N"], s["K"], device=dev, generator=g) / math.sqrt(s["K"])).to(torch.bfloat16)
        flop = 2 * s["M"] * s["N"] * s["K"]
        ref = a @ w.t()
        row = dict(s)
        if measure:
            t = timed(lambda a=a, w=w: a @ w.t())
            row["bf16"] = {"ms": t * 1e3, "tflops": flop / t / 1e12}
            if peaks:
                row["bf16"]["pct_peak"] = 100 * flop / t / 1e12 / peaks["bf16_tflops"]
        for name, prep in variants.items():
            try:
                fn = prep(a, w)
                out = fn()
                err = rel_err(out.float(), ref.float())
                entry: dict[str, Any] = {"rel_err_vs_bf16": err}
                if measure:
                    t = timed(fn)
                    entry.update(ms=t * 1e3, tflops=flop / t / 1e12)
                    if peaks:
                        entry["pct_fp8_peak"] = 100 * flop / t / 1e12 / peaks["fp8_tflops"]
                        entry["speedup_vs_bf16"] = row["bf16"]["ms"] / entry["ms"]
                row[name] = entry
                if s is shapes[0]:
                    checks.check(f"gemm {name} agrees with bf16 (rel < 0.1)", err < 0.1, rel_err=err)
            except Exception as e:  # a variant this torch/chip lacks is recorded, not fatal
                row[name] = {"unsupported": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        rows.append(row)
        if measure:
            print(f"  {s['model']:14} tp{s['tp']} {s['gemm']:8} " + " ".join(
                f"{k}={v.get('tflops', float('nan')):.0f}" for k, v in row.items() if isinstance(v, dict)
            ), flush=True)  # fmt: skip
        del a, w, ref
    out: dict[str, Any] = {"tokens": shapes[0]["M"], "rows": rows}
    if not measure:
        out["gpu_shape_calls"] = check_gpu_shape_calls(variants, checks)
    return out


def check_gpu_shape_calls(
    variants: dict[str, Callable[[torch.Tensor, torch.Tensor], Callable[[], torch.Tensor]]], checks: Checks
) -> dict[str, Any]:
    """Each FP8 variant's call at every GPU shape, on meta tensors: torch's own scaled_mm shape,
    stride and padding checks (its meta registration mirrors the CUDA ones) judge the layouts the
    GPU run will pass, so a wrong scale layout shows here rather than in the first GPU minutes."""
    shapes = gemm_shapes(4096)
    result: dict[str, Any] = {}
    for name, prep in variants.items():
        refused = []
        for s in shapes:
            a = torch.empty(s["M"], s["K"], dtype=torch.bfloat16, device="meta")
            w = torch.empty(s["N"], s["K"], dtype=torch.bfloat16, device="meta")
            try:
                out = prep(a, w)()
                if out.shape != (s["M"], s["N"]) or out.dtype != torch.bfloat16:
                    refused.append(f"{s['model']} {s['gemm']}: output {tuple(out.shape)} {out.dtype}")
            except Exception as e:  # each refusal is reported with its shape
                refused.append(
                    f"{s['model']} {s['gemm']}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                )
        if len(refused) == len(shapes) and not _has_scaled_mm_v2():
            result[name] = {"unsupported": f"this torch ({torch.__version__}) has no scaled_mm for it"}
            continue
        result[name] = {"shapes": len(shapes), "refused": refused}
        checks.check(f"gemm {name} call accepted at all {len(shapes)} GPU shapes (meta tensors)", not refused,
                     **({"refused": refused[:3]} if refused else {}))  # fmt: skip
    return result


def _has_scaled_mm_v2() -> bool:
    F = torch.nn.functional
    return hasattr(F, "scaled_mm") and hasattr(F, "ScalingType")


# ----------------------------------------------------------------------------------------------
# fused log-prob vs unfused
# ----------------------------------------------------------------------------------------------


def section_fused(kernels: Any, checks: Checks, measure: bool) -> dict[str, Any]:
    dev = "cuda" if measure else "cpu"
    # correctness: Triton (GPU, or interpreter on CPU) = PyTorch reference = unfused, fp32, a
    # padded vocab shard that is not rank 0 (vocab_start != 0), temperature != 1, entropy on
    g = torch.Generator(device=dev).manual_seed(0)
    n, hdim, v_local, vocab, start = 37, 64, 96, 150, 96  # the shard holds rows 96..191; 150.. are padding
    h = torch.randn(n, hdim, device=dev, generator=g)
    w = torch.randn(v_local, hdim, device=dev, generator=g) / 8
    t = torch.randint(start, vocab, (n,), device=dev, generator=g)  # targets this shard holds
    t[::5] = -100  # ignore labels (held by no rank)
    res = {}
    for impl in ("triton", "torch", "unfused"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        kw = dict(temperature=0.8, with_entropy=True, tp_group=None, vocab_start=start)
        if impl == "unfused":
            lp, ent = kernels.unfused_vocab_parallel_log_probs(hh, ww, t, vocab, **kw)
        else:
            lp, ent = kernels.fused_vocab_parallel_log_probs(
                hh, ww, t, vocab, chunk_tokens=8, impl=impl, **kw
            )
        # a shard alone is not a softmax: compare the local quantities and their gradients
        (lp.sum() + (ent * 0.5).sum()).backward()
        res[impl] = [lp.detach(), ent.detach(), hh.grad, ww.grad]
    for impl in ("triton", "torch"):
        err = max(rel_err(x, y) for x, y in zip(res[impl], res["unfused"]))
        checks.check(f"fused log-prob ({impl}) = unfused, fp32 (rel < 1e-5)", err < 1e-5, rel_err=err)
    out: dict[str, Any] = {
        "correctness_fp32_rel_err": {
            k: max(rel_err(x, y) for x, y in zip(v, res["unfused"])) for k, v in res.items()
        }
    }
    if not measure:
        return out
    vocab, tokens, hidden = 128256, 4096, 4096
    out["shape"] = {"vocab": vocab, "tokens": tokens, "hidden": hidden, "dtype": "bf16"}
    out["note"] = "one TP rank's vocab shard on one GPU (no TP all-reduce; it moves [tokens] floats)"
    for tp in (1, 8):
        v_local = -(-vocab // (128 * tp)) * 128
        entry = {}
        results = {}
        for impl in ("unfused", "fused"):
            torch.cuda.empty_cache()
            g = torch.Generator(device="cuda").manual_seed(0)
            h = torch.randn(tokens, hidden, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
            w = (
                (torch.randn(v_local, hidden, device="cuda", generator=g) / 64)
                .to(torch.bfloat16)
                .requires_grad_()
            )
            t = torch.randint(0, min(v_local, vocab), (tokens,), device="cuda", generator=g)

            def run(impl=impl, h=h, w=w, t=t):
                h.grad = w.grad = None
                if impl == "fused":
                    lp = kernels.fused_vocab_parallel_log_probs(h, w, t, vocab, tp_group=None, vocab_start=0)
                else:
                    lp = kernels.unfused_vocab_parallel_log_probs(
                        h, w, t, vocab, tp_group=None, vocab_start=0
                    )
                lp.sum().backward()
                return lp

            run()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            h.grad = w.grad = None
            torch.cuda.reset_peak_memory_stats()
            lp = run()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            wgrad = w.numel() * w.element_size()
            secs = timed(run, min_seconds=0.5, max_iters=10, warmup=1)
            entry[impl] = {
                "ms": secs * 1e3,
                "tokens_per_second": tokens / secs,
                "peak_bytes_incl_weight_grad": peak,
                "peak_bytes": peak - wgrad,
                "weight_grad_bytes": wgrad,
            }
            results[impl] = (lp.detach().float(), h.grad.float(), w.grad.float())
            del h, w, t, lp
        entry["rel_err_bf16"] = {
            k: rel_err(a, b)
            for k, a, b in zip(("logp", "grad_h", "grad_w"), results["fused"], results["unfused"])
        }
        entry["peak_ratio"] = entry["fused"]["peak_bytes"] / entry["unfused"]["peak_bytes"]
        checks.check(f"fused = unfused at TP{tp} bf16 (log-prob rel < 1e-3)", entry["rel_err_bf16"]["logp"] < 1e-3,
                     **entry["rel_err_bf16"])  # fmt: skip
        print(f"  TP{tp} shard {v_local}: fused {entry['fused']['ms']:.1f} ms, unfused {entry['unfused']['ms']:.1f} ms;"
              f" peak ratio {entry['peak_ratio']:.3f}", flush=True)  # fmt: skip
        out[f"tp{tp}"] = entry
    return out


# ----------------------------------------------------------------------------------------------
# blockwise FP8 quantization kernel
# ----------------------------------------------------------------------------------------------


def section_quant(kernels: Any, checks: Checks, measure: bool) -> dict[str, Any]:
    dev = "cuda" if measure else "cpu"
    shapes = [(14336 * 2, 4096), (13312, 16384), (16384, 6656)] if measure else [(256, 384), (200, 130)]
    peaks = chip_info()["peaks"]
    rows = []
    for m, n in shapes:
        g = torch.Generator(device=dev).manual_seed(1)
        w = (torch.randn(m, n, device=dev, generator=g) * 0.02).to(torch.bfloat16)
        q_t, s_t = kernels.blockwise_fp8_quantize(w, impl="triton")
        q_r, s_r = kernels.blockwise_fp8_quantize(w, impl="torch")
        same = torch.equal(q_t.view(torch.uint8), q_r.view(torch.uint8)) and torch.equal(s_t, s_r)
        checks.check(f"fp8 quantize triton == torch bytes {m}x{n}", same)
        # bf16 output on the GPU; fp32 under the interpreter, whose fp32->bf16 cast truncates
        out_dtype = torch.bfloat16 if measure else torch.float32
        d_t = kernels.blockwise_fp8_dequantize(q_t, s_t, out_dtype=out_dtype, impl="triton")
        d_r = kernels.blockwise_fp8_dequantize(q_t, s_t, out_dtype=out_dtype, impl="torch")
        checks.check(f"fp8 dequantize triton == torch {m}x{n}", torch.equal(d_t, d_r))
        row: dict[str, Any] = {"shape": [m, n], "bytes_identical": same}
        if measure:
            scales = s_t.numel() * 4
            q_bytes = m * n * 2 + m * n + scales  # read bf16, write fp8 + scales
            d_bytes = m * n + scales + m * n * 2
            tq = timed(lambda w=w: kernels.blockwise_fp8_quantize(w, impl="triton"))
            td = timed(lambda q=q_t, s=s_t: kernels.blockwise_fp8_dequantize(q, s, out_dtype=torch.bfloat16))
            row["quantize"] = {
                "ms": tq * 1e3,
                "gbps": q_bytes / tq / 1e9,
                "num_warps": kernels.fp8.BLOCK_NUM_WARPS,
            }
            if (m, n) == shapes[0]:  # the warps choice was made from ptxas registers (compile_check.py)
                row["quantize_gbps_by_num_warps"] = {
                    nw: q_bytes / timed(lambda w=w, nw=nw: kernels.fp8.quant_launch(w, kernels.BLOCK, nw).run()) / 1e9
                    for nw in (4, 8, 16)
                }  # fmt: skip
            row["dequantize"] = {"ms": td * 1e3, "gbps": d_bytes / td / 1e9}
            if peaks:
                row["quantize"]["pct_hbm"] = 100 * row["quantize"]["gbps"] / peaks["hbm_gbps"]
                row["dequantize"]["pct_hbm"] = 100 * row["dequantize"]["gbps"] / peaks["hbm_gbps"]
            print(f"  {m}x{n}: quantize {row['quantize']['gbps']:.0f} GB/s, dequantize {row['dequantize']['gbps']:.0f} GB/s",
                  flush=True)  # fmt: skip
        rows.append(row)
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------
# Megatron engine train-step MFU
# ----------------------------------------------------------------------------------------------


def train_flops_per_token(
    layers: int, hidden: int, ffn: int, heads: int, kv: int, hd: int, vocab: int, seq: int
) -> float:
    """Model FLOPs per trained token (fwd + bwd = 3x fwd), causal attention counted as half."""
    per_layer = hidden * (heads + 2 * kv) * hd + heads * hd * hidden + 3 * hidden * ffn
    matmul = 2 * (layers * per_layer + hidden * vocab)
    attention = 2 * 2 * layers * seq * heads * hd / 2
    return 3 * (matmul + attention)


def _megatron_missing() -> str | None:
    try:
        import megatron.core  # noqa: F401
    except ImportError as e:
        return f"megatron-core not importable here ({e}); run_all.sh carries it from benchmarks/gpu/.deps"
    sys.path.insert(0, str(REPO))
    return None


def _llama_config(
    hidden: int, ffn: int, heads: int, kv: int, hd: int, vocab: int, layers: int, seq: int
) -> Any:
    from megatron_tulu.config.schema import ModelConfig

    return ModelConfig(
        name="llama3.1_8b_slice", num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn,
        num_attention_heads=heads, num_query_groups=kv, kv_channels=hd, vocab_size=vocab,
        max_position_embeddings=max(seq, 8192),
    )  # fmt: skip


def _sft_batch(vocab: int, seq: int, dev: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """One unpacked row, every target trained: the SFT trainer's batch layout."""
    ids = torch.randint(
        0, vocab, (1, seq + 1), device=dev, generator=torch.Generator(device=dev).manual_seed(seed)
    )
    return {
        "tokens": ids[:, :-1],
        "labels": ids[:, 1:],
        "loss_mask": torch.ones(1, seq, device=dev),
        "position_ids": torch.arange(seq, device=dev).unsqueeze(0),
        "document_ids": torch.zeros(1, seq, dtype=torch.long, device=dev),
    }


def _train_one_step(chunks: list[Any], optimizer: Any, batch: dict[str, torch.Tensor], vocab: int) -> float:
    """One optimizer step through the trainers' forward helper with the fused log-prob head
    (their default); the SFT trainer's own forward_step would pull in hydra, which the GPU machine
    may not have. Returns the per-token loss."""
    from megatron_tulu.engine.train_step import forward_batch, train_step
    from megatron_tulu.losses.lm import masked_token_loss

    def step(it, model):
        head, b = forward_batch(model, next(it), vocab_size=vocab, fused=True)

        def loss_func(head):
            loss, n = masked_token_loss(-head.log_probs(b["labels"]), b["loss_mask"])
            return loss, n, {"loss_per_token": torch.stack([loss.detach(), n.float()])}

        return head, loss_func

    seq = batch["tokens"].shape[1]
    res = train_step(step, iter([batch]), chunks, optimizer, None, num_microbatches=1, seq_length=seq,
                     micro_batch_size=1)  # fmt: skip
    return float(res.metrics["loss_per_token"])


def section_mfu(kernels: Any, checks: Checks, measure: bool) -> dict[str, Any]:
    missing = _megatron_missing()
    if missing:
        return {"skipped": missing}
    from megatron_tulu.config.schema import OptimizerConfig, ParallelConfig, PrecisionConfig
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.optimizer import build_optimizer
    from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
    from megatron_tulu.engine.train_step import prepare_model_for_training

    if measure:
        hidden, ffn, heads, kv, hd, vocab = LLAMA["llama3.1_8b"]
        layers, seq, steps, dtype = 4, 4096, 6, "bf16"
    else:
        hidden, ffn, heads, kv, hd, vocab = 256, 768, 4, 2, 64, 1000
        layers, seq, steps, dtype = 1, 64, 2, "bf16"  # the GPU run's dtype: mixed-precision optimizer
    cfg = _llama_config(hidden, ffn, heads, kv, hd, vocab, layers, seq)
    parallel, precision = ParallelConfig(), PrecisionConfig(params_dtype=dtype, transformer_impl="local")
    init_parallel(cfg, parallel, seed=1)
    try:
        chunks = build_model(cfg, parallel, precision)
        optimizer = build_optimizer(chunks, OptimizerConfig(lr=1e-5, warmup_ratio=0.0), parallel, precision)
        prepare_model_for_training(chunks, optimizer)
        dev = "cuda" if measure else "cpu"
        batch = _sft_batch(vocab, seq, dev)
        losses, times = [], []
        for _ in range(steps):
            if measure:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            losses.append(_train_one_step(chunks, optimizer, batch, vocab))
            if measure:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        finite = all(math.isfinite(x) for x in losses)
        checks.check("train step runs, loss finite", finite, losses=losses)
        out: dict[str, Any] = {
            "model": "llama3.1_8b shape" if measure else "tiny (CPU check)",
            "layers": layers, "seq": seq, "micro_batch": 1, "dtype": dtype, "spec": "local (no TE)",
            "losses": losses,
        }  # fmt: skip
        if measure:
            sec = sorted(times[2:])[len(times[2:]) // 2]  # median after 2 warm-up steps
            fpt = train_flops_per_token(layers, hidden, ffn, heads, kv, hd, vocab, seq)
            peaks = chip_info()["peaks"]
            out.update(
                step_seconds=sec, tokens_per_second=seq / sec, model_tflops=fpt * seq / sec / 1e12,
                flops_per_token=fpt, peak_memory_bytes=torch.cuda.max_memory_allocated(),
            )  # fmt: skip
            if peaks:
                out["mfu_pct"] = 100 * out["model_tflops"] / peaks["bf16_tflops"]
            print(f"  train step {sec * 1e3:.0f} ms, {out['tokens_per_second']:.0f} tokens/s, "
                  f"MFU {out.get('mfu_pct', float('nan')):.1f}%", flush=True)  # fmt: skip
        return out
    finally:
        destroy_parallel()


def section_resume(kernels: Any, checks: Checks, measure: bool) -> dict[str, Any]:
    """A checkpoint resume through Megatron's DistributedOptimizer (the GPU default) in bf16: the
    step after a resume must be the uninterrupted run's step. The GPU run of Nov 2026 was not (loss
    145.04 vs 144.69); the cause, found on CPU, was a shared AdamW ``step`` tensor after a load
    (fixed in engine/mcore_compat.py). Whether the per-parameter step counts are right is checked
    exactly on either device; whether loss and weights match bit for bit is checked on CPU and
    reported on GPU (its kernels need not be deterministic)."""
    missing = _megatron_missing()
    if missing:
        return {"skipped": missing}
    if importlib.util.find_spec("psutil") is None:
        # seen in the rehearsal venv: the writer process fails and the save never returns
        return {"skipped": "psutil is not installed: megatron-core's checkpoint writer needs it"}
    import tempfile

    from megatron_tulu.config.schema import OptimizerConfig, ParallelConfig, PrecisionConfig
    from megatron_tulu.engine.checkpoint import find_latest, load_checkpoint, save_checkpoint
    from megatron_tulu.engine.model import build_model, unwrap
    from megatron_tulu.engine.optimizer import build_optimizer
    from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
    from megatron_tulu.engine.train_step import prepare_model_for_training

    hidden, ffn, heads, kv, hd, vocab, layers, seq = 256, 768, 4, 2, 64, 1000, 2, 64
    cfg = _llama_config(hidden, ffn, heads, kv, hd, vocab, layers, seq)
    parallel = ParallelConfig(use_distributed_optimizer=True)
    precision = PrecisionConfig(params_dtype="bf16", transformer_impl="local")
    dev = "cuda" if measure else "cpu"
    init_parallel(cfg, parallel, seed=1)

    def build() -> tuple[list[Any], Any]:
        chunks = build_model(cfg, parallel, precision)
        opt = build_optimizer(chunks, OptimizerConfig(lr=1e-3, warmup_ratio=0.0), parallel, precision)
        prepare_model_for_training(chunks, opt)
        return chunks, opt

    def weights(chunks: list[Any]) -> dict[str, torch.Tensor]:
        return {
            k: v.detach().float().clone()
            for k, v in unwrap(chunks[0]).state_dict().items()
            if torch.is_tensor(v)
        }

    def adam_steps(opt: Any) -> list[float]:
        inner = [o.optimizer for o in getattr(opt, "chained_optimizers", [opt])]
        return sorted({float(st["step"]) for o in inner for st in o.state.values() if "step" in st})

    try:
        chunks, opt = build()
        _train_one_step(chunks, opt, _sft_batch(vocab, seq, dev, seed=1), vocab)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, 1, chunks, opt, None)
            straight_loss = _train_one_step(chunks, opt, _sft_batch(vocab, seq, dev, seed=2), vocab)
            straight = weights(chunks)
            chunks, opt = build()
            load_checkpoint(find_latest(tmp), chunks, opt, None)
        resumed_loss = _train_one_step(chunks, opt, _sft_batch(vocab, seq, dev, seed=2), vocab)
        resumed = weights(chunks)
        max_diff = max(float((resumed[k] - straight[k]).abs().max()) for k in straight)
        steps = adam_steps(opt)
        out = {
            "optimizer": type(getattr(opt, "chained_optimizers", [opt])[0]).__name__,
            "dtype": "bf16", "losses": {"uninterrupted": straight_loss, "resumed": resumed_loss},
            "weights_max_abs_diff": max_diff, "adam_steps_after": steps,
        }  # fmt: skip
        if steps:  # torch AdamW keeps a step per parameter (TE / Apex FusedAdam keep one per group)
            checks.check("resume: every parameter's AdamW step is 2 after the resumed step", steps == [2.0],
                         steps=steps)  # fmt: skip
        same = resumed_loss == straight_loss and max_diff == 0.0
        if measure:
            print(f"  resumed step: loss {resumed_loss:.6f} vs {straight_loss:.6f} uninterrupted, "
                  f"weights max |diff| {max_diff:.3g}", flush=True)  # fmt: skip
        else:
            checks.check("resume through the DistributedOptimizer is bit-exact (bf16)", same,
                         loss=resumed_loss, uninterrupted=straight_loss, max_diff=max_diff)  # fmt: skip
        return out
    finally:
        destroy_parallel()


SECTIONS = {
    "gemm": section_gemm, "fused": section_fused, "quant": section_quant, "mfu": section_mfu,
    "resume": section_resume,
}  # fmt: skip
FILES = {
    "gemm": "gemm.json", "fused": "fused_logprob.json", "quant": "fp8_quant.json", "mfu": "mfu.json",
    "resume": "resume.json",
}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results" / "gpu"))
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = p.parse_args()
    measure = torch.cuda.is_available()
    kernels = load_kernels()
    if not measure and os.environ.get("TRITON_INTERPRET") != "1":
        print("error: on CPU run this through benchmarks/gpu/run_all.sh (it sets TRITON_INTERPRET=1)")
        return 2
    clash = interpreter_clash(_version("triton"), _version("numpy"))
    if not measure and clash:
        print(f"error: {clash}")
        return 2
    info = {
        "chip": chip_info(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "mode": "measure" if measure else "cpu-correctness-only",
    }
    print(
        f"GPU suite on {info['chip']['name']} ({info['mode']}); torch {info['torch']}, triton {info['triton']}"
    )
    if not measure:
        print("no CUDA device: checking correctness only (small sizes, Triton interpreter); no speed numbers")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    summary: dict[str, Any] = {"info": info, "sections": {}}
    start = time.perf_counter()
    for name in [s for s in args.only.split(",") if s]:
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            result = SECTIONS[name](kernels, checks, measure)
        except Exception as e:
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
            checks.check(f"section {name} completed", False, error=result["error"])
        if "skipped" in result:
            print(f"  skipped: {result['skipped']}", flush=True)
        result["seconds"] = time.perf_counter() - t0
        summary["sections"][name] = result
        if measure:
            (out_dir / FILES[name]).write_text(json.dumps({"info": info, **result}, indent=2) + "\n")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    summary["checks"] = checks.items
    summary["all_checks_ok"] = checks.ok
    summary["seconds"] = time.perf_counter() - start
    name = "summary.json" if measure else "cpu_correctness.json"
    (out_dir / name).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(
        f"{'all checks passed' if checks.ok else 'SOME CHECKS FAILED'}; {summary['seconds']:.0f} s; wrote {out_dir / name}"
    )
    return 0 if checks.ok else 1


def interpreter_clash(triton_version: str | None, numpy_version: str | None) -> str | None:
    """Why the Triton interpreter cannot run the kernels with these versions, or None.

    Triton 3.6's interpreter turns a kernel's integer argument into a Python int through a
    one-element array, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted"): seen
    with Triton 3.6.0 + NumPy 2.4.6 (NumPy 2.3.5 works; Triton 3.9.0 works with 2.4.6). Compiled
    GPU runs never use the interpreter, so this concerns the CPU correctness mode only."""

    def major_minor(v: str | None) -> tuple[int, int] | None:
        try:
            major, minor = (v or "").split(".")[:2]
            return int(major), int(minor)
        except ValueError:
            return None

    t, n = major_minor(triton_version), major_minor(numpy_version)
    if t is not None and n is not None and t < (3, 7) and n >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter fails on NumPy {numpy_version} (a loop over an integer "
            "kernel argument raises 'only 0-dimensional arrays can be converted'); for the CPU "
            "correctness run install numpy<2.4 or Triton >= 3.9"
        )
    return None


def _version(pkg: str) -> str | None:
    try:
        return importlib.import_module(pkg).__version__
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
