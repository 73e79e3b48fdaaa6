"""One description of each Triton launch, used both to run it and to compile it ahead of time.

The launchers in this package build a :class:`TritonLaunch` (kernel, grid, arguments, constexprs,
warps, and the tensor the caller gets back) and run it; ``benchmarks/gpu/compile_check.py``
builds the same launches from ``meta`` tensors and compiles them for Hopper (sm_90a) with
Triton's own NVIDIA backend and ptxas, so the kernels' compiled form (not just the interpreter's)
is checked on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TritonLaunch:
    kernel: Any  # a triton.JITFunction
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    result: Any = None  # what run() returns (the output tensors the kernel writes)

    def run(self) -> Any:
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps)
        return self.result

    def signature(self) -> dict[str, str]:
        """Triton's ahead-of-time signature of this launch (argument name -> type), typed by the
        rule Triton's launcher applies to the same arguments."""
        from triton.runtime.jit import mangle_type

        names = list(self.kernel.arg_names)
        runtime = [n for n in names if n not in self.constexprs]
        if len(runtime) != len(self.args):
            raise ValueError(f"{self.name}: {len(self.args)} arguments for parameters {runtime}")
        types = {n: mangle_type(a) for n, a in zip(runtime, self.args)}
        return {n: types.get(n, "constexpr") for n in names}

    @property
    def name(self) -> str:
        return self.kernel.__name__
