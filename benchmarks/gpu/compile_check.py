"""Compile every Triton kernel of megatron-tulu for Hopper (H100/H200) on a machine without a GPU.

    python benchmarks/gpu/compile_check.py [--arch 90] [--out benchmarks/results/gpu/sm90_compile.json]

The Triton interpreter (the unit tests' CPU path) checks what the kernels compute, not that they
compile: it accepts code the NVIDIA backend refuses and says nothing about registers. This script
builds each launch exactly as the library builds it (``kernels`` launch builders over ``meta``
tensors: same arguments, constexprs and warps), compiles it ahead of time with Triton's own NVIDIA
backend (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas), and reports per kernel the
registers, spills and shared memory that ptxas reports, and the PTX's approximate instructions
and fp8 casts. Exit status 1 when a kernel fails to compile, spills registers (a slowdown worth
knowing before the first GPU run), or, for the FP8 kernels that must match PyTorch byte for byte,
uses an approximate division / reciprocal.

It compiles the generic specialization (no divisibility hints); at run time Triton may pick
specializations with alignment hints, which only simplify the address code. Speed needs a GPU:
``benchmarks/gpu/run_all.sh``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# this compiles; the interpreter would hand back Python functions instead of kernels
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import LLAMA, REPO, load_kernels


def launches(kernels: Any) -> list[tuple[str, Any]]:
    """(label, TritonLaunch) for every distinct configuration the library launches."""
    from megatron_tulu.kernels import fp8, fused_logprob

    meta = torch.device("meta")
    vocab = LLAMA["llama3.1_8b"][5]
    out: list[tuple[str, Any]] = []
    for tp in (1, 8):
        local_vocab = -(-vocab // (128 * tp)) * 128
        rows = kernels.chunk_tokens_for(local_vocab)
        tgt = torch.empty(rows, dtype=torch.int64, device=meta)
        stats = torch.empty(rows, dtype=torch.float32, device=meta)
        for dtype in (torch.bfloat16, torch.float32):
            z = torch.empty(rows, local_vocab, dtype=dtype, device=meta)
            for entropy in (False, True):
                tag = f"tp{tp} vocab shard {local_vocab}, {_name(dtype)} logits, entropy={entropy}"
                out.append((tag, fused_logprob.stats_launch(z, tgt, local_vocab, 0.7, entropy)))
                ent = stats if entropy else None
                out.append((tag, fused_logprob.grad_launch(z, tgt, local_vocab, 0.7, stats, ent, stats, ent)))
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.empty(53248 * 2 // 8, 16384, dtype=dtype, device=meta)  # 405B fc1 shard at TP8
        quant = fp8.quant_launch(w, kernels.BLOCK)
        out.append((f"{_name(dtype)} weight {tuple(w.shape)}", quant))
        q, s = quant.result
        out.append((f"to {_name(dtype)} {tuple(w.shape)}", fp8.dequant_launch(q, s, kernels.BLOCK, dtype)))
    return out


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ptxas(arch: int) -> Any:
    """The ptxas Triton itself uses for this architecture (path, version)."""
    from triton.backends.nvidia import compiler

    get = compiler.get_ptxas
    return get(arch) if inspect.signature(get).parameters else get()


def ptxas_usage(ptx: str, arch: int) -> dict[str, int]:
    """Registers, spills, stack and barriers as ``ptxas -v`` reports them for this PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-500:]}")
    text = proc.stderr

    def grab(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_store_bytes": grab(r"(\d+) bytes spill stores"),
        "spill_load_bytes": grab(r"(\d+) bytes spill loads"),
        "stack_bytes": grab(r"(\d+) bytes stack frame"),
    }


# Kernels whose output must be byte-identical to PyTorch (and so to vLLM's scaled_quantize): no
# approximate division or reciprocal may appear in their PTX. Triton's plain `/` on fp32 compiles
# to div.full.f32 (approximate), which would break that identity on the GPU while the interpreter,
# computing in NumPy, stays exact: only the compiled code can show it.
BYTE_EXACT = {"quant_kernel", "dequant_kernel"}


def approximate_ops(ptx: str) -> dict[str, int]:
    """PTX instructions that round differently from IEEE (counts by opcode)."""
    found: dict[str, int] = {}
    for op in re.findall(r"\b((?:div|rcp|sqrt|rsqrt|ex2|lg2)\.(?:approx|full)[\w.]*)", ptx):
        found[op] = found.get(op, 0) + 1
    return found


def compile_one(launch: Any, arch: int) -> dict[str, Any]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    source = ASTSource(fn=launch.kernel, signature=launch.signature(), constexprs=dict(launch.constexprs))
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps}
    )
    ptx = compiled.asm["ptx"]
    usage = ptxas_usage(ptx, arch)
    return {
        "shared_bytes": int(compiled.metadata.shared),
        **usage,
        "approximate_ops": approximate_ops(ptx),
        "fp8_casts": sorted(set(re.findall(r"cvt\.[\w.]*e4m3[\w.]*", ptx))),
        "cubin_bytes": len(compiled.asm["cubin"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu" / "sm90_compile.json"))
    args = p.parse_args()
    try:
        import triton
    except ImportError:
        print("error: Triton is not installed; nothing to compile")
        return 2
    kernels = load_kernels()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    print(f"compiling for sm_{args.arch}a with Triton {triton.__version__} (no GPU needed)")
    print(f"{'kernel':15} {'warps':>5} {'regs':>5} {'spill B':>8} {'smem B':>7}  configuration")
    for label, launch in launches(kernels):
        key = json.dumps([launch.name, launch.signature(), launch.constexprs, launch.num_warps], default=str)
        if key in seen:  # shard sizes that compile to the same code
            continue
        seen.add(key)
        row: dict[str, Any] = {
            "kernel": launch.name,
            "configuration": label,
            "signature": launch.signature(),
            "constexprs": launch.constexprs,
            "num_warps": launch.num_warps,
        }
        try:
            row.update(compile_one(launch, args.arch))
            spill = row["spill_store_bytes"] + row["spill_load_bytes"]
            inexact = launch.name in BYTE_EXACT and bool(row["approximate_ops"])
            row["ok"] = spill == 0 and not inexact
            if inexact:
                row["error"] = f"approximate ops in a byte-exact kernel: {row['approximate_ops']}"
            print(
                f"{launch.name:15} {launch.num_warps:>5} {row['registers']:>5} {spill:>8} {row['shared_bytes']:>7}  {label}"
                + (f"  FAILED: {row['error']}" if inexact else "")
            )
        except Exception as e:  # a compile error is the finding; report it with the rest
            row.update(ok=False, error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
            print(f"{launch.name:15} {launch.num_warps:>5}  FAILED: {row['error']}  ({label})")
        rows.append(row)
    ok = all(r["ok"] for r in rows)
    result = {
        "target": f"sm_{args.arch}a",
        "triton": triton.__version__,
        "torch": torch.__version__,
        "ptxas": str(getattr(_ptxas(args.arch), "version", "")),
        "note": "ahead-of-time compile on a machine without a GPU; registers and spills from ptxas -v",
        "kernels": rows,
        "all_ok": ok,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'all kernels compile without spills (FP8 kernels: IEEE ops only)' if ok else 'SOME KERNELS FAILED, SPILL OR ROUND INEXACTLY'}; wrote {out}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
