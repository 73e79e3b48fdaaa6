"""Run Megatron-Core 0.16.1 on CPU (gloo). Inert when CUDA is present.

Megatron-Core assumes CUDA in a handful of places that matter for a dense GPT on CPU:

1. ``torch.cuda.current_device()`` feeds ``device=`` arguments (RoPE, grad buffers, p2p, schedules);
   it raises without CUDA.  -> returns 0, and (3) maps that device to CPU.
2. ``torch.cuda.synchronize()`` after pipeline p2p.  -> no-op.
3. tensors created with ``device="cuda"`` / ``device=<int>`` / ``.cuda()``.  -> a
   ``TorchFunctionMode`` rewrites the device to CPU.
4. the model-parallel RNG tracker stores CUDA generator states.  -> a tracker subclass storing
   CPU generator states (same fork/add contract).
5. grad clipping asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``.  -> the optimizer
   module's reference is swapped for the same clip (scale by max_norm / (norm + 1e-6)) on any device.
6. activation recompute (``tensor_parallel.checkpoint``) saves and restores the device RNG with
   ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``.  -> on CPU the device generator is the CPU
   generator, so they read and write that. The recompute runs inside ``torch.autograd.backward``,
   where torch pauses the (3) mode, so ``CheckpointFunction`` is swapped for a subclass whose
   backward re-enters the mode.
7. the mixed-precision optimizer (bf16 / fp16 parameters with fp32 main copies) sorts parameters
   by ``param.type() in ['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor']`` and refuses any
   other type.  -> :func:`cuda_type_names`, entered by ``engine.optimizer`` around the optimizer's
   construction only, answers ``Tensor.type()`` with the CUDA name of the same dtype (the device
   the rest of this module maps to CPU), so bf16 training runs on CPU through Megatron's own
   mixed-precision optimizer, the production path.

Everything is registered in ``PATCH_TARGETS`` so ``tests/unit/test_cpu_compat.py`` can check that
each target still exists and is still used by the installed Megatron-Core: if a new release moves
or drops one, that test fails loudly instead of this module silently doing nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# The release whose CUDA assumptions this module was written against.
SUPPORTED_MEGATRON_CORE = ("0.16.1",)

# (module, attribute, a source file of megatron-core that must still use it)
PATCH_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("torch.cuda", "current_device", "megatron/core/models/common/embeddings/rotary_pos_embedding.py"),
    ("torch.cuda", "synchronize", "megatron/core/pipeline_parallel/p2p_communication.py"),
    (
        "megatron.core.tensor_parallel.random",
        "CudaRNGStatesTracker",
        "megatron/core/tensor_parallel/random.py",
    ),
    (
        "megatron.core.optimizer.optimizer",
        "clip_grad_by_total_norm_fp32",
        "megatron/core/optimizer/optimizer.py",
    ),
    (
        "megatron.core.tensor_parallel.random",
        "_get_cuda_rng_state",
        "megatron/core/tensor_parallel/random.py",
    ),
    (
        "megatron.core.tensor_parallel.random",
        "_set_cuda_rng_state",
        "megatron/core/tensor_parallel/random.py",
    ),
    ("megatron.core.tensor_parallel.random", "CheckpointFunction", "megatron/core/tensor_parallel/random.py"),
)

# (source file, text it must still contain): checks a shim answers, where there is no attribute
# to patch (item 7); tests/unit/test_cpu_compat.py fails when a release drops or rewords one.
TYPE_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "megatron/core/optimizer/optimizer.py",
        "param.type() in ['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor']",
    ),
)

_state: dict[str, Any] = {"enabled": False, "originals": {}, "mode": None}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True  # a bare index means a CUDA ordinal in torch factory functions
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrite CUDA device arguments to CPU for every torch call made while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func in (torch.Tensor.to,) and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _CudaTypeNamesMode(TorchFunctionMode):
    """``Tensor.type()`` (no argument) names a CPU tensor's type as its CUDA twin."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(result, str):
            if result.startswith("torch.") and not result.startswith("torch.cuda."):
                return "torch.cuda." + result.removeprefix("torch.")
        return result


@contextlib.contextmanager
def cuda_type_names() -> Iterator[None]:
    """Item 7: while active (and only when the shims are), CPU tensors report CUDA type names."""
    if not _state["enabled"]:
        yield
        return
    with _CudaTypeNamesMode():
        yield


def _make_cpu_checkpoint_function(base: type) -> type:
    """``CheckpointFunction`` whose backward (the recompute) runs under the CUDA->CPU mode: it is
    called from inside ``torch.autograd.backward``, during which torch pauses the outer mode."""

    class _CpuCheckpointFunction(base):  # type: ignore[misc, valid-type]
        @staticmethod
        def backward(ctx, *args):
            with _CudaToCpuMode():
                return base.backward(ctx, *args)

    return _CpuCheckpointFunction


def _make_cpu_tracker_class(base: type) -> type:
    """A ``CudaRNGStatesTracker`` subclass that stores CPU generator states (same contract)."""

    class _CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    _CpuRNGStatesTracker.__name__ = "CpuRNGStatesTracker"
    return _CpuRNGStatesTracker


def _get_device_rng_state(device: Any = None, clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """``_get_cuda_rng_state`` on CPU: the device generator is the CPU one."""
    return torch.get_rng_state()


def _set_device_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _clip_grad_by_total_norm(
    parameters: list[torch.Tensor], max_norm: float, total_norm: float, use_decoupled_grad: bool = False
) -> None:
    """Megatron's ``clip_grad_by_total_norm_fp32`` without its CUDA-only type assertion."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for grad in grads:
            grad.mul_(clip_coeff)


def cpu_compat_needed() -> bool:
    return not torch.cuda.is_available()


def _check_version() -> None:
    import megatron.core

    version = megatron.core.__version__
    if version not in SUPPORTED_MEGATRON_CORE and not os.environ.get("MEGATRON_TULU_ALLOW_UNTESTED_MCORE"):
        raise RuntimeError(
            f"megatron_tulu.engine.cpu_compat was written for megatron-core {SUPPORTED_MEGATRON_CORE}, "
            f"found {version}. Re-check its CUDA assumptions (tests/unit/test_cpu_compat.py) and "
            "update SUPPORTED_MEGATRON_CORE, or set MEGATRON_TULU_ALLOW_UNTESTED_MCORE=1 to try anyway."
        )


def _patch(owner: Any, name: str, value: Any) -> None:
    key = (owner.__name__, name)
    if key not in _state["originals"]:
        if not hasattr(owner, name):
            raise RuntimeError(f"cpu_compat: {owner.__name__}.{name} no longer exists in this release")
        _state["originals"][key] = getattr(owner, name)
    setattr(owner, name, value)


def enable_cpu_compat() -> bool:
    """Install the CPU shims if CUDA is absent. Returns True when they are active.

    Idempotent. Under CUDA it does nothing at all, so GPU runs see stock Megatron-Core.
    """
    if not cpu_compat_needed():
        return False
    if _state["enabled"]:
        return True
    _check_version()
    random_mod = importlib.import_module("megatron.core.tensor_parallel.random")

    _patch(torch.cuda, "current_device", lambda: 0)
    _patch(torch.cuda, "synchronize", lambda device=None: None)
    _patch(random_mod, "CudaRNGStatesTracker", _make_cpu_tracker_class(random_mod.CudaRNGStatesTracker))
    _patch(random_mod, "_get_cuda_rng_state", _get_device_rng_state)
    _patch(random_mod, "_set_cuda_rng_state", _set_device_rng_state)
    _patch(random_mod, "CheckpointFunction", _make_cpu_checkpoint_function(random_mod.CheckpointFunction))
    # A tracker created before the patch would still hold the CUDA class.
    random_mod.initialize_rng_tracker(force_reset=True)

    optimizer_mod = importlib.import_module("megatron.core.optimizer.optimizer")
    _patch(optimizer_mod, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm)

    mode = _CudaToCpuMode()
    mode.__enter__()
    _state.update(enabled=True, mode=mode)
    return True


def disable_cpu_compat() -> None:
    """Undo :func:`enable_cpu_compat` (used by tests)."""
    if not _state["enabled"]:
        return
    _state["mode"].__exit__(None, None, None)
    for (owner_name, name), value in _state["originals"].items():
        setattr(importlib.import_module(owner_name), name, value)
    _state.update(enabled=False, mode=None, originals={})


def is_enabled() -> bool:
    return bool(_state["enabled"])
