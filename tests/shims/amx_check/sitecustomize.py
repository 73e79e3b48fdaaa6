"""TEST SHIM ONLY — relaxes vLLM CPU's AMX requirement for the block-FP8 W8A16 kernel.

vLLM CPU 0.32 refuses block-FP8 weights on CPUs without AMX tiles:
``CPUFp8BlockScaledMMKernel.is_supported`` in
``vllm/model_executor/kernels/linear/scaled_mm/cpu.py`` checks ``torch.cpu._is_amx_tile_supported()``,
although the kernel it selects (``torch.ops._C.fp8_scaled_mm_cpu``) runs on the AVX-512 test
machines. The FP8 refit test (``tests/integration/test_fp8_refit.py``) puts this directory on
``PYTHONPATH`` of its engine process, so this ``sitecustomize`` runs at start-up in that process and
in every vLLM worker it spawns, and replaces exactly that one ``is_supported`` with a copy that skips
the AMX test (every other check kept; other users of ``_is_amx_tile_supported``, e.g. CPU
attention, are untouched). Shipped code never imports this: megatron_tulu does not patch vLLM.

Active only when ``MEGATRON_TULU_TEST_RELAX_AMX=1`` (the test sets it next to ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "vllm.model_executor.kernels.linear.scaled_mm.cpu"


def _patch(module) -> None:
    kernel = module.CPUFp8BlockScaledMMKernel

    def is_supported(cls, compute_capability=None):
        from vllm import _custom_ops as ops
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return False, "requires CPU platform."
        # (test shim) the AMX tile check is skipped here
        if not ops._supports_cpu_fp8_w8a16:
            return False, "fp8_scaled_mm_cpu op not available."
        return True, None

    kernel.is_supported = classmethod(is_supported)
    kernel._megatron_tulu_test_shim = "amx_check relaxed"


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if os.environ.get("MEGATRON_TULU_TEST_RELAX_AMX") == "1" and not any(
    isinstance(f, _Finder) for f in sys.meta_path
):
    sys.meta_path.insert(0, _Finder())
