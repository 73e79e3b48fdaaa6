"""The learner side of the weight refit: every learner rank streams its planned shards into every
engine rank after each update (:class:`Refitter`)."""

from __future__ import annotations

from collections.abc import Callable

from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.engine.faults import crash_point
from megatron_tulu.engine.job import DriverGate
from megatron_tulu.rollout.fleet import EngineFleet
from megatron_tulu.rollout.refit import LearnerRefit, refit_spec_for


class Refitter:
    """Streams every learner rank's planned shards into every engine after each update.

    ``gate``: the learners' one driver gate (every learner counts the same passages);
    ``refit_address()``: where learner rank 0 hosts the refit group's store, asked once every
    learner has passed the gate."""

    def __init__(
        self,
        cfg: RLVRRunConfig,
        chunks,
        gate: DriverGate,
        refit_address: Callable[[], tuple[str, int]],
        fleet: EngineFleet | None,
    ):
        self.cfg, self.fleet, self.gate = cfg, fleet, gate
        ro = cfg.rollout
        # the engines' receive-buffer bound travels in the spec: both sides plan the reload calls
        spec = refit_spec_for(
            chunks,
            cfg.model,
            ro.engine_tp,
            ro.num_engines,
            weight_dtype=ro.weight_dtype,
            receive_buffer_bytes=ro.refit_receive_buffer_mb << 20,
        )
        # Engines may still be loading (minutes at 405B): the driver waits for every engine to
        # answer, polling, and the other learners wait at the gate, so the refit group forms only
        # once all members are there and its timeout bounds the formation alone.
        if fleet is not None:
            fleet.wait_ready()
        self.gate.passage()
        host, port = refit_address()
        self.learner: LearnerRefit | None = None

        def join_learner() -> None:
            self.learner = LearnerRefit(spec, host, port, timeout_s=ro.refit_timeout_s)

        if fleet is not None:
            fleet.join_refit(spec, host, port, ro.refit_timeout_s, join_learner)
        else:
            join_learner()
        self.bucket = ro.refit_bucket_mb << 20

    def refit(self, chunks, step: int | None = None) -> dict[str, float]:
        """Returns ``refit_bytes_over_shard_max`` (the largest bytes received / planned shard bytes
        over every engine rank; 1.00 is shard-exact) on the driver, {} elsewhere. ``step``: the
        update the weights include (fault injection aims at it)."""
        timeout = self.cfg.rollout.refit_timeout_s
        # the driver comes here once the batch in flight is generated (generate_wait, as long as
        # it takes); the other learners wait for it at the gate, not in the transfer's timeout
        self.gate.passage()

        def send() -> None:
            crash_point("kill_in_refit", step)
            self.learner.send(chunks, bucket_bytes=self.bucket, timeout_s=timeout)

        if self.fleet is None:
            send()
            return {}
        stats = self.fleet.refit(send, bucket_bytes=self.bucket, checksums=False, timeout_s=timeout)
        ratios = [s["bytes_received"] / s["shard_bytes"] for s in stats if s["shard_bytes"]]
        return {
            "refit_bytes_over_shard_max": max(ratios),
            "refit_bytes_over_shard_min": min(ratios),
            "refit_engine_ranks": float(len(stats)),
        }

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()
