"""Runs inside every vLLM worker process: joins the refit group and receives refits.

vLLM mixes this class into its worker class when the engine is started with
``worker_extension_cls="megatron_tulu.rollout.worker_ext.RefitWorkerExtension"`` (what
:class:`~megatron_tulu.rollout.engine.RolloutEngine` does); its methods are then callable by name
through ``LLM.collective_rpc`` on every worker, with plain-data arguments (no insecure
serialization needed). Method names carry a ``refit_`` prefix so they cannot clash with the
worker's own attributes (vLLM asserts that).
"""

from __future__ import annotations

import logging

import torch

from megatron_tulu.rollout.bridge.transport import (
    DEFAULT_BUCKET_BYTES,
    DEFAULT_TIMEOUT_S,
    RefitError,
    RefitSpec,
    destroy_refit_group,
    init_refit_group,
    plan_fingerprint,
    receive_refit,
)

_LAYERWISE_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_INPLACE_LOGGER = "vllm.model_executor.model_loader.reload.inplace"
_FAILED = "%s: Failed to load weights"
_NOT_LOADED = "Following weights were not loaded from checkpoint: %s"


class _RotaryReloadNotice(logging.Filter):
    """vLLM's layerwise reload warns "<layer>: Failed to load weights" for rotary embeddings on
    every refit: their cos/sin cache is a buffer no checkpoint carries, and vLLM puts it back
    unchanged. Drop exactly that record so real reload warnings stay visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights"
            and isinstance(record.args, tuple)
            and len(record.args) == 1
            and str(record.args[0]).endswith("RotaryEmbedding")
        )


class _SplitReloadNotices(logging.Filter):
    """Holds back, while a refit runs, the two notices vLLM logs for what one ``reload_weights``
    call did not load: a refit split into several reload calls (bounded receive buffers) leaves
    every layer outside the current call unloaded by design, so each call would warn about all
    the others. After the refit :meth:`release` passes them on unchanged if there was one call;
    after several, it warns once about the parameters no call loaded (the intersection of the
    calls' "not loaded" sets; vLLM reports them for unquantized models only)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.active and record.msg in (_FAILED, _NOT_LOADED):
            self.records.append(record)
            return False
        return True

    def release(self, reload_calls: int) -> None:
        self.active = False
        records, self.records = self.records, []
        if reload_calls <= 1:
            for record in records:
                logging.getLogger(record.name).handle(record)
            return
        sets = [
            set(r.args[0]) for r in records if r.msg == _NOT_LOADED and isinstance(r.args, tuple) and r.args
        ]
        never = set.intersection(*sets) if len(sets) == reload_calls else set()
        if never:
            logging.getLogger(_INPLACE_LOGGER).warning(
                "refit: no reload call of %d loaded these weights: %s", reload_calls, sorted(never)
            )


def _require_block_fp8(model: torch.nn.Module) -> None:
    """An fp8_block refit sends e4m3 weights + ``weight_scale_inv``: the engine must have been
    started on a blockwise-FP8 checkpoint (``quantization_config.weight_block_size``), or vLLM's
    loaders would cast the fp8 bytes into bf16 parameters and drop the scales."""
    if not any(name.endswith("weight_scale_inv") for name, _ in model.named_parameters()):
        raise RefitError(
            "fp8_block refit into an engine without block-FP8 layers (no weight_scale_inv parameters): "
            "start the engine on megatron_tulu.models.fp8_export.export_fp8_block(...)'s checkpoint"
        )


class RefitWorkerExtension:
    """Mixin for vLLM's worker (``self`` is the worker: ``self.model_runner``, ``self.device``)."""

    def refit_tp_rank(self) -> int:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()

    def refit_join_group(
        self,
        host: str,
        port: int,
        world_size: int,
        rank_offset: int,
        backend: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> int:
        """Join the refit group as rank ``rank_offset + TP rank``; blocks until everyone joined."""
        rank = rank_offset + self.refit_tp_rank()
        reload_logger = logging.getLogger(_LAYERWISE_LOGGER)
        if not any(isinstance(f, _RotaryReloadNotice) for f in reload_logger.filters):
            reload_logger.addFilter(_RotaryReloadNotice())
        self._refit_notices = _SplitReloadNotices()
        for name in (_LAYERWISE_LOGGER, _INPLACE_LOGGER):
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, _SplitReloadNotices)]:
                logger.removeFilter(f)
            logger.addFilter(self._refit_notices)
        self._refit_group = init_refit_group(host, port, rank, world_size, backend, timeout_s)
        self._refit_group_rank = rank
        return rank

    def refit_leave_group(self) -> None:
        group = getattr(self, "_refit_group", None)
        if group is not None:
            destroy_refit_group(group)
            self._refit_group = None

    def refit_receive(
        self,
        spec: dict,
        engine_index: int = 0,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        checksums: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fingerprint: str | None = None,
    ) -> dict:
        """Receive one refit (planned from ``spec``, a :meth:`RefitSpec.to_dict`) and reload it."""
        group = getattr(self, "_refit_group", None)
        if group is None:
            raise RefitError("refit_receive before refit_join_group")
        refit_spec = RefitSpec.from_dict(spec)
        plan = refit_spec.plan()
        if fingerprint is not None and plan_fingerprint(plan) != fingerprint:
            raise RefitError(
                f"vLLM worker planned {plan_fingerprint(plan)}, the caller {fingerprint}: different plans"
            )
        tp_rank = self.refit_tp_rank()
        if tp_rank >= refit_spec.engine.tp:
            raise RefitError(f"worker TP rank {tp_rank} outside the plan's engine TP {refit_spec.engine.tp}")
        device = self.device if isinstance(getattr(self, "device", None), torch.device) else None
        runner = self.model_runner
        if refit_spec.engine.fp8:
            _require_block_fp8(runner.get_model())

        def load(stream) -> None:
            runner.reload_weights(weights_iterator=stream)

        notices = getattr(self, "_refit_notices", None) or _SplitReloadNotices()
        notices.active = True
        stats = {"reload_calls": 0}
        try:
            stats = receive_refit(
                plan,
                engine_index,
                tp_rank,
                group,
                load,
                dtype=refit_spec.torch_dtype,
                bucket_bytes=bucket_bytes,
                receive_buffer_bytes=refit_spec.receive_buffer_bytes,
                checksums=checksums,
                timeout_s=timeout_s,
                device=device,
            )
        finally:
            notices.release(stats["reload_calls"])
        return stats

    def refit_weight_sums(self, names: list[str] | None = None) -> dict[str, float]:
        """Float64 sums of this worker's (sharded, possibly repacked) parameters, for debugging."""
        out = {}
        for name, p in self.model_runner.get_model().named_parameters():
            if names is None or name in names:
                out[name] = float(p.detach().to(torch.float64).sum())
        return out
