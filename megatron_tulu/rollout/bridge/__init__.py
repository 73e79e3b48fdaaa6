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
- ``megatron-tulu plan-refit`` (:mod:`megatron_tulu.commands.plan_refit`) prints a plan and its cost
  (``--weight-dtype fp8_block``: bf16 and FP8 side by side).

Engine weight dtypes (``EngineLayout.weight_dtype`` = ``rollout.weight_dtype``): ``auto`` sends the
learner's dtype; ``fp8_block`` quantizes each GEMM-weight slice on the learner as it is sent (e4m3 +
fp32 scale-inverse per 128x128 block, :func:`.layouts.fp8_quantized` names them), bf16 for the
rest, and refuses layouts where a shard boundary cuts a block (:func:`.layouts.check_fp8_alignment`).

Names are re-exported lazily so importing the package stays cheap.
"""

from __future__ import annotations

from megatron_tulu import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "layouts": (
            "EngineLayout",
            "LearnerLayout",
            "MegatronParam",
            "PlanError",
            "WEIGHT_DTYPES",
            "check_fp8_alignment",
            "fp8_quantized",
            "fused_group",
            "hf_tensor_names",
            "learner_coords",
            "learner_global_rank",
            "learner_pieces",
            "vllm_region",
        ),
        "planner": ("NaiveSummary", "RefitPlan", "Transfer", "naive_broadcast_summary", "plan_refit"),
        "schedule": ("ReceiveSchedule", "receive_schedule"),
    },
)
