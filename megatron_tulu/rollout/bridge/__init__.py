"""Weight-resharding bridge: Megatron learner shards (TP x PP x DP) -> tensor-parallel vLLM engines.

- :mod:`.layouts`: learner / engine layouts, Megatron's rank order, where each HF tensor element
  lives on the learner and which HF box each vLLM rank's weight loader reads (pure).
- :mod:`.planner`: :func:`plan_refit` -> :class:`RefitPlan` (one sender per slice, each vLLM rank
  receives exactly its shard), its byte / message / time summaries and the naive full-tensor
  broadcast baseline (pure).
- :mod:`.schedule`: buckets, reload calls under ``rollout.refit_receive_buffer_mb`` (each engine
  rank's peak receive buffers) and the refit group's one communicator (pure).
- :mod:`.transport`: runs a plan over the refit group (grouped point-to-point, one NCCL
  communicator) into ``reload_weights``.
- :mod:`.plan_cli`: ``megatron-tulu plan-refit`` (``--weight-dtype fp8_block``: bf16 and FP8 side by side).

Engine weight dtypes (``EngineLayout.weight_dtype`` = ``rollout.weight_dtype``): ``auto`` sends the
learner's dtype; ``fp8_block`` quantizes each GEMM-weight slice on the learner as it is sent (e4m3 +
fp32 scale-inverse per 128x128 block, :func:`.layouts.fp8_quantized` names them), bf16 for the
rest, and refuses layouts where a shard boundary cuts a block (:func:`.layouts.check_fp8_alignment`).

Names are re-exported lazily so importing the package stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EngineLayout": "layouts",
    "LearnerLayout": "layouts",
    "MegatronParam": "layouts",
    "PlanError": "layouts",
    "WEIGHT_DTYPES": "layouts",
    "check_fp8_alignment": "layouts",
    "fp8_quantized": "layouts",
    "fused_group": "layouts",
    "hf_tensor_names": "layouts",
    "learner_coords": "layouts",
    "learner_global_rank": "layouts",
    "learner_pieces": "layouts",
    "vllm_region": "layouts",
    "NaiveSummary": "planner",
    "RefitPlan": "planner",
    "Transfer": "planner",
    "naive_broadcast_summary": "planner",
    "plan_refit": "planner",
    "ReceiveSchedule": "schedule",
    "receive_schedule": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
