"""Loading a DistributedOptimizer checkpoint on megatron-core 0.16.1 with torch's AdamW (no Apex/TE).

Unlike ``engine/cpu_compat.py`` (CPU only, inert under CUDA), everything here applies on GPU too:
the GPU stack has no Transformer Engine or Apex either (README, "GPU" row), so megatron-core falls
back to ``torch.optim.AdamW``, whose per-parameter ``step`` tensor its DistributedOptimizer
handles in three places that break a resume. ``engine/checkpoint.load_checkpoint`` calls
:func:`prepare_for_load` before it builds the loading state dict and :func:`load_state` for the
loaded optimizer state:

1. a fresh DistributedOptimizer has no Adam state, and ``state_dict()`` (called while building the
   loading state dict) reads every parameter's ``step``.  -> :func:`materialize_optimizer_state`.
2. ``load_parameter_state_from_fully_reshardable`` copies every key of the live Adam state from the
   checkpointed tensors, which leave ``step`` out (restored separately): ``KeyError: 'step'``.
   -> :func:`torch_adam_step_kept_aside`.
3. ``load_state_dict`` gives every parameter one and the same ``step`` tensor, which AdamW then
   advances in place once per parameter: after a resume the count grew by the number of parameters
   each step, so the bias correction was wrong and training left the uninterrupted run (seen on
   GPU as a 0.2% loss difference two steps after a resume; on CPU, step 55 instead of 3 for the
   27-parameter test model; commit 88f680a).  -> :func:`unshare_adam_steps`.

When to delete: ``tests/unit/test_mcore_compat.py`` loads a checkpoint into a DistributedOptimizer
on stock megatron-core without each workaround and asserts that the failure above still happens.
When a megatron-core upgrade fixes one, its test fails: delete that workaround (and its test);
when all three tests fail, delete this module and its two calls in ``engine/checkpoint.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from megatron.core.optimizer.optimizer import MegatronOptimizer


def _optimizers(optimizer: MegatronOptimizer) -> list[Any]:
    """The Megatron optimizers inside ``optimizer`` (itself unless it is a chained one)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def materialize_optimizer_state(optimizer: MegatronOptimizer) -> None:
    """Give a fresh DistributedOptimizer its Adam state before a load (item 1).

    Megatron only creates placeholder state for its FSDP format. The placeholder step runs with
    lr = weight decay = 0, so no parameter moves, and every value is then overwritten by the
    checkpoint.
    """
    for opt in _optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner.state or not hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            continue
        saved = [(g["lr"], g.get("weight_decay", 0.0)) for g in inner.param_groups]
        for g in inner.param_groups:
            g["lr"], g["weight_decay"] = 0.0, 0.0
        opt._init_optimizer_states_with_dummy_values()
        for g, (lr, wd) in zip(inner.param_groups, saved):
            g["lr"], g["weight_decay"] = lr, wd


@contextlib.contextmanager
def torch_adam_step_kept_aside(optimizer: MegatronOptimizer) -> Iterator[None]:
    """Hide each parameter's ``step`` while the DistributedOptimizer copies its Adam state from the
    checkpoint, then put it back (item 2)."""
    patched = []
    for opt in _optimizers(optimizer):
        if not hasattr(opt, "_set_main_param_and_optimizer_states"):
            continue
        original = opt._set_main_param_and_optimizer_states

        def copy_without_step(model_param, tensors, _opt=opt, _orig=original):
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            state = _opt.optimizer.state[_opt.optimizer.param_groups[group_index]["params"][group_order]]
            step = state.pop("step", None) if "step" not in tensors else None
            try:
                _orig(model_param, tensors)
            finally:
                if step is not None:
                    state["step"] = step

        opt._set_main_param_and_optimizer_states = copy_without_step
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states  # back to the class method


def unshare_adam_steps(optimizer: MegatronOptimizer) -> None:
    """Give every parameter its own AdamW ``step`` tensor again after a load (item 3)."""
    for opt in _optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        seen: set[int] = set()
        for state in inner.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.clone()
                seen.add(id(step))


def prepare_for_load(optimizer: MegatronOptimizer) -> None:
    """Before the loading state dict of ``optimizer`` is built."""
    materialize_optimizer_state(optimizer)


def load_state(optimizer: MegatronOptimizer, state: Any) -> None:
    """``optimizer.load_state_dict(state)`` with items 2 and 3 worked around."""
    with torch_adam_step_kept_aside(optimizer):
        optimizer.load_state_dict(state)
    unshare_adam_steps(optimizer)
