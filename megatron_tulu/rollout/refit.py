"""Learner-side refit orchestration and the log-prob verification helper.

Every learner rank (torchrun rank, Megatron initialised)::

    spec = refit_spec_for(model_chunks, cfg, engine_tp=N, num_engines=E,
                          weight_dtype=cfg_rollout.weight_dtype)   # "auto" | "fp8_block"
    refit = LearnerRefit(spec, host, port)          # joins the refit group (blocks for everyone)
    ...
    refit.send(model_chunks)                        # after every optimizer step, on every rank
    ...
    refit.close()

and the engine controller(s), with the same ``spec`` / host / port::

    engine.join_refit_group(host, port, spec, engine_index=e)
    engine.refit()                                  # pairs with the learner's send()

For ``weight_dtype="fp8_block"`` the engines must have been started on a blockwise-FP8 checkpoint
(:func:`megatron_tulu.models.fp8_export.engine_model_dir`); each learner rank quantizes its slices
as it sends them (e4m3 + fp32 128x128 block scales for the GEMM weights, bf16 for the rest).

``bucket_bytes`` and ``checksums`` must be equal on both sides (they decide the message order
and sizes); the receive-buffer bound travels in the spec (``refit_spec_for(...,
receive_buffer_bytes=rollout.refit_receive_buffer_mb << 20)``). Verification: :func:`learner_sequence_logprobs` (collective over the learner) vs
:meth:`~megatron_tulu.rollout.engine.RolloutEngine.sequence_logprobs`, compared with
:func:`max_abs_diff`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.dtypes import dtype_name
from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout
from megatron_tulu.rollout.bridge.transport import (
    DEFAULT_BUCKET_BYTES,
    DEFAULT_TIMEOUT_S,
    RefitSpec,
    destroy_refit_group,
    init_refit_group,
    local_tensors,
    send_refit,
)

__all__ = ["LearnerRefit", "learner_sequence_logprobs", "max_abs_diff", "refit_spec_for"]


def refit_spec_for(
    model_chunks: list[torch.nn.Module],
    cfg: ModelConfig,
    engine_tp: int,
    num_engines: int = 1,
    *,
    engine_model: ModelConfig | None = None,
    weight_dtype: str = "auto",
    receive_buffer_bytes: int | None = None,
) -> RefitSpec:
    """The refit spec of this Megatron learner (layout from ``parallel_state``, dtype and layer
    spec from the parameters) towards ``num_engines`` TP=``engine_tp`` vLLM engines whose weights
    are ``weight_dtype`` (``rollout.weight_dtype``: ``"auto"`` or ``"fp8_block"``), each engine
    rank holding at most ``receive_buffer_bytes`` of refit buffers at once
    (``rollout.refit_receive_buffer_mb``; ``None``: unbounded)."""
    from megatron.core import parallel_state

    tensors = local_tensors(model_chunks)
    dtype = next(iter(tensors.values())).dtype
    impl = (
        "transformer_engine" if any(n.endswith("linear_qkv.layer_norm_weight") for n in tensors) else "local"
    )
    learner = LearnerLayout(
        tp=parallel_state.get_tensor_model_parallel_world_size(),
        pp=parallel_state.get_pipeline_model_parallel_world_size(),
        dp=parallel_state.get_data_parallel_world_size(),
        model=cfg,
        dtype_bytes=torch.empty((), dtype=dtype).element_size(),
        transformer_impl=impl,
    )
    engine = EngineLayout(
        tp=engine_tp, num_engines=num_engines, model=engine_model, weight_dtype=weight_dtype
    )
    return RefitSpec(learner, engine, dtype_name(dtype), receive_buffer_bytes)


class LearnerRefit:
    """One learner rank's membership in a refit group (group rank = its global rank)."""

    def __init__(
        self,
        spec: RefitSpec,
        host: str,
        port: int,
        *,
        rank: int | None = None,
        backend: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        import torch.distributed as dist

        self.spec = spec
        self.plan = spec.plan()  # PlanError here, before anyone waits on the group
        self.rank = dist.get_rank() if rank is None else rank
        world = spec.learner.world_size + spec.engine.world_size
        self.group = init_refit_group(host, port, self.rank, world, backend, timeout_s)
        self.timeout_s = timeout_s

    def send(
        self,
        model_chunks,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        checksums: bool = False,
        timeout_s: float | None = None,
    ) -> dict:
        """Send this rank's planned slices (every learner rank calls it; returns its stats)."""
        return send_refit(
            self.plan,
            model_chunks,
            self.group,
            self.rank,
            bucket_bytes=bucket_bytes,
            receive_buffer_bytes=self.spec.receive_buffer_bytes,
            dtype=self.spec.torch_dtype,
            checksums=checksums,
            timeout_s=timeout_s if timeout_s is not None else self.timeout_s,
        )

    def close(self) -> None:
        if self.group is not None:
            destroy_refit_group(self.group)
            self.group = None


def learner_sequence_logprobs(
    model_chunks: list[torch.nn.Module], cfg: ModelConfig, sequences: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """``out[s][i]`` = log p(token ``i+1`` | tokens ``0..i``) under the Megatron model, in fp32.

    Collective over all learner ranks (one forward per sequence through the pipeline); the
    result is returned on every rank.
    """
    from megatron_tulu.engine.train_step import forward_only_collect
    from megatron_tulu.losses.vocab_parallel import vocab_parallel_log_probs

    def next_token_logps(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = batch["tokens"]
        return {"logps": vocab_parallel_log_probs(logits.float()[:, :-1], ids[:, 1:], cfg.vocab_size)}

    out = []
    for seq in sequences:
        ids = torch.tensor([list(seq)], dtype=torch.long)
        batch = {"tokens": ids, "position_ids": torch.arange(ids.shape[1]).unsqueeze(0)}
        out.append(
            forward_only_collect(model_chunks, [batch], next_token_logps, micro_batch_size=1)["logps"][0]
        )
    return out


def max_abs_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Largest absolute difference between two ragged lists of per-token log-probs."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} sequences")
    worst = 0.0
    for x, y in zip(a, b):
        tx, ty = torch.as_tensor(list(x), dtype=torch.float64), torch.as_tensor(list(y), dtype=torch.float64)
        if tx.shape != ty.shape:
            raise ValueError(f"sequence lengths differ: {tuple(tx.shape)} vs {tuple(ty.shape)}")
        if tx.numel():
            worst = max(worst, float((tx - ty).abs().max()))
    return worst
