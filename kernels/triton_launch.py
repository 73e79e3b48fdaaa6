"""One description of each Triton launch, used both to run it and to compile it ahead of time.

The launchers in this package build a :class:`TritonLaunch` (kernel, grid, arguments, constexprs,
warps) and run it; ``benchmarks/gpu/compile_check.py`` builds the same launches from ``meta``
tensors and compiles them for Hopper (sm_90a) with Triton's own NVIDIA backend and ptxas, so the
kernels' compiled form (not just the interpreter's) is checked on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# torch dtype -> Triton's pointer element type name (the ones these kernels take)
_POINTER_TYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.float8_e4m3fn: "fp8e4nv",
}


@dataclass(frozen=True)
class TritonLaunch:
    kernel: Any  # a triton.JITFunction
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps)

    def signature(self) -> dict[str, str]:
        """Triton's ahead-of-time signature of this launch (argument name -> type)."""
        names = list(self.kernel.arg_names)
        runtime = [n for n in names if n not in self.constexprs]
        if len(runtime) != len(self.args):
            raise ValueError(f"{self.name}: {len(self.args)} arguments for parameters {runtime}")
        types = dict(zip(runtime, (_arg_type(n, a) for n, a in zip(runtime, self.args))))
        return {n: types.get(n, "constexpr") for n in names}

    @property
    def name(self) -> str:
        return self.kernel.__name__


def _arg_type(name: str, value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dtype not in _POINTER_TYPES:
            raise ValueError(f"argument {name}: no Triton pointer type for {value.dtype}")
        return "*" + _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise ValueError(f"argument {name}: no Triton type for {type(value).__name__}")
