"""The one dtype table: each floating-point dtype the project stores, trains or sends, in both
spellings, with its size.

- the config spelling ``fp32`` / ``bf16`` / ``fp16``: ``precision.params_dtype``, ``plan-refit
  --dtype``, ``convert --dtype``, the memory planner's ``grad_dtype`` / ``params_dtype``;
- the torch spelling ``float32`` / ``bfloat16`` / ``float16``: ``torch.<name>``, HF
  ``config.json``'s ``torch_dtype``, vLLM's ``dtype``, the refit wire dtype.

Bottom layer (docs/layers.md): it imports nothing of the project, and torch only inside
:func:`torch_dtype` / :func:`dtype_name`, so the pure planners (per-GPU memory, refit plans) read
sizes without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FloatType:
    short: str  # config spelling
    name: str  # torch spelling
    bytes: int  # per element


FLOAT_TYPES = (
    FloatType("fp32", "float32", 4),
    FloatType("bf16", "bfloat16", 2),
    FloatType("fp16", "float16", 2),
)
SHORT_NAMES = tuple(t.short for t in FLOAT_TYPES)  # ("fp32", "bf16", "fp16")
TORCH_NAMES = tuple(t.name for t in FLOAT_TYPES)  # ("float32", "bfloat16", "float16")
BYTES: dict[str, int] = {t.short: t.bytes for t in FLOAT_TYPES}  # config spelling -> bytes
_BY_NAME = {**{t.short: t for t in FLOAT_TYPES}, **{t.name: t for t in FLOAT_TYPES}}


def torch_dtype(name: str) -> torch.dtype:
    """``torch.bfloat16`` for ``"bf16"`` or ``"bfloat16"``; KeyError for a name not in the table
    (callers that take user input check it first, with their own message)."""
    import torch

    return getattr(torch, _BY_NAME[name].name)


def dtype_name(dtype: torch.dtype) -> str:
    """The torch spelling of a dtype of the table (``torch.bfloat16`` -> ``"bfloat16"``); KeyError
    for any other dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in TORCH_NAMES:
        raise KeyError(dtype)
    return name
