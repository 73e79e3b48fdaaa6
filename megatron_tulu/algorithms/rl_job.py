"""Setting up an RL job's ranks by role (learner, engine) and the engines' fleet.

Every rank of the single ``torchrun`` world calls :func:`start_rl_job`: roles come from
:func:`~megatron_tulu.algorithms.roles.assign_roles` (the table ``examples/rlvr_405b.py --dry-run``
prints), the control channel and the watchdog span the whole world, and only learner ranks go on to
form the default process group (Megatron-Core's world). Engine-only ranks then run
:func:`run_engine_rank` until the driver (learner rank 0) stops them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.algorithms.roles import RankRole, RoleAssignment, assign_roles
from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.engine.control import ControlChannel
from megatron_tulu.engine.job import LOCAL_ONLY, DriverGate, JobEnv, connect_store, job_env, lookup, publish
from megatron_tulu.engine.liveness import Watchdog, guard_process_group, monitor_ranks
from megatron_tulu.engine.network import configure_node_network, port_for_foreign_server
from megatron_tulu.engine.parallel import LearnerWorld
from megatron_tulu.rollout.fleet import (
    ColocatedEngineThread,
    EngineFleet,
    EngineOptions,
    EnginePlacement,
    serve_engine_rank,
)

__all__ = ["RLJob", "describe_rank", "start_rl_job"]


def describe_rank(roles: RoleAssignment, rank: int) -> str:
    """``learner tp1 pp0 dp0 on node 0`` / ``engine 1 tp-rank 3 on node 2`` (for error messages)."""
    r = roles.role_of(rank)
    parts = []
    if r.learner is not None:
        parts.append(f"learner tp{r.learner.tp} pp{r.learner.pp} dp{r.learner.dp}")
    if r.engine is not None:
        parts.append(f"engine {r.engine.engine} tp-rank {r.engine.tp_rank}")
    return " + ".join(parts) + f" on node {r.node}"


@dataclass
class RLJob:
    """This rank's place in the job and the cross-role plumbing."""

    job: JobEnv
    roles: RoleAssignment
    role: RankRole
    store: object
    channel: ControlChannel | None
    watchdog: Watchdog | None
    host: str
    placements: list[EnginePlacement]
    _gate: DriverGate | None = None

    @property
    def is_driver(self) -> bool:
        return self.job.rank == 0

    def alive(self) -> None:
        """Raises once the watchdog has a verdict (for waits that poll)."""
        if self.watchdog is not None:
            self.watchdog.check()

    def driver_gate(self) -> DriverGate:
        """The learners' one gate before collectives that wait on the driver's work (one object
        per process: every learner counts the same passages)."""
        if self._gate is None:
            self._gate = DriverGate(self.store, self.is_driver, alive=self.alive)
        return self._gate

    def learner_world(self) -> LearnerWorld:
        return LearnerWorld(self.store, self.job.rank, self.roles.learner_world_size)

    def engine_options(self, cfg: RLVRRunConfig, model: str, dtype: str) -> EngineOptions:
        ro = cfg.rollout
        return EngineOptions(
            model=model,
            tp=ro.engine_tp,
            # vLLM refuses float32 with fp8: FP8 engines compute in bf16 (also on CPU)
            dtype="bfloat16" if ro.weight_dtype == "fp8_block" else dtype,
            seed=cfg.train.seed,
            memory_fraction=ro.gpu_memory_utilization,
            max_model_len=ro.max_prompt_len + ro.max_new_tokens + 8,
            enforce_eager=ro.enforce_eager,
            logprobs_mode="processed_logprobs" if cfg.rlvr.tis_cap is not None else "raw_logprobs",
            weight_dtype=ro.weight_dtype,
            export_dir=str(Path(cfg.train.output_dir) / "engine_weights"),
        )

    def refit_address(self) -> tuple[str, int]:
        """Where learner rank 0 hosts the refit group's store: its own address and a port outside
        the ephemeral range (the store binds it), shared with the other learners through the job
        store."""
        if self.is_driver:
            publish(self.store, "refit/address", (self.host, port_for_foreign_server(self.host)))
        return lookup(self.store, "refit/address", alive=self.alive)

    def start_fleet(self, options: EngineOptions) -> tuple[EngineFleet | None, ColocatedEngineThread | None]:
        """On learner ranks: start the engines this process hosts (colocated placement) and, on the
        driver, the fleet that reaches all engines."""
        from megatron_tulu.rollout.engine import RolloutEngine

        local, service = {}, None
        for p in self.placements:
            if p.leader == self.job.rank:
                engine = RolloutEngine(options.engine_model(self.job.rank), **options.kwargs())
                if self.is_driver:
                    local[p.index] = engine
                else:
                    service = ColocatedEngineThread(self.channel, self.job.rank, engine)
        if not self.is_driver:
            return None, service
        stop = [r.rank for r in self.roles.ranks if not r.is_learner]
        stop += [
            p.leader for p in self.placements if p.leader != 0 and self.roles.role_of(p.leader).is_learner
        ]
        return EngineFleet(self.channel, self.placements, local, stop), service

    def run_engine_rank(self, options: EngineOptions) -> None:
        """Main of an engine-only rank (dedicated placement)."""
        placement = self.placements[self.role.engine.engine]
        serve_engine_rank(
            self.channel,
            self.store,
            self.job.rank,
            placement,
            options,
            self.roles.gpus_per_node,
            self.host,
            alive=self.alive,
        )

    def run(self, options: EngineOptions, learner: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """This rank's part of the job: an engine-only rank serves until the driver stops it (and
        returns {}), a learner rank returns ``learner()``. A failure is told to the peers first."""
        try:
            if not self.role.is_learner:
                self.run_engine_rank(options)
                summary: dict[str, Any] = {}
            else:
                summary = learner()
        except BaseException as exc:
            if isinstance(exc, SystemExit) and exc.code == 128 + 15:
                self.fail("stopped by SIGTERM (a launcher stops its node's ranks when one of them dies)")
            else:
                self.fail(f"{type(exc).__name__}: {exc}")
            raise
        self.finish()
        return summary

    def finish(self) -> None:
        if self.watchdog is not None:
            self.watchdog.finish()

    def fail(self, reason: str) -> None:
        """Tell the peers this rank is failing, then name the rank(s) that look dead: a rank usually
        fails because a peer died, and the error it got (a closed connection) does not say which."""
        if self.watchdog is None:
            return
        self.watchdog.report_failure(reason)
        culprits = self.watchdog.diagnose()
        me = f"rank {self.job.rank} ({describe_rank(self.roles, self.job.rank)})"
        if culprits:
            print(f"error: {culprits}; {me} stops: {reason[:300]}", file=sys.stderr, flush=True)


def stop_rollouts(parts: dict[str, Any], service: ColocatedEngineThread | None) -> None:
    """Close a learner rank's rollout ``parts`` in order (generation, the refit group, the engines),
    each even when an earlier one fails (the first error is already raised), then wait for this
    rank's colocated engine service, which ends on the driver's stop, and close its engine."""
    for name, part in parts.items():
        if part is not None:
            try:
                part.close()
            except Exception as exc:  # keep closing the rest
                print(f"[rlvr] closing {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if service is not None:
        service.join(60)
        service.engine.close()


def start_rl_job(cfg: RLVRRunConfig, verbose: bool = True) -> RLJob:
    """Roles for every rank of this world, then the store, control channel and watchdog."""
    job = job_env()
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun gives each rank a session of its own
        guard_process_group()  # vLLM's engine processes go with this rank, even after a SIGKILL
    nodes = max(1, job.world_size // job.local_world_size)
    roles = assign_roles(
        cfg.model, cfg.parallel, cfg.rollout, nodes=nodes, gpus_per_node=job.local_world_size
    )
    if verbose and job.rank == 0:
        print("roles:\n" + roles.describe(), file=sys.stderr, flush=True)
    timeout_s = cfg.rollout.heartbeat_timeout_s or cfg.rollout.refit_timeout_s
    store = connect_store(job, timeout_s=max(cfg.rollout.refit_timeout_s, 300.0))
    placements = [
        EnginePlacement(
            index=e,
            ranks=tuple(roles.engine_ranks(e)),
            nodes=tuple(roles.role_of(r).node for r in roles.engine_ranks(e)),
        )
        for e in range(roles.num_engines)
    ]
    channel = watchdog = None
    host = LOCAL_ONLY  # a world of one: nothing outside this process dials it
    if job.world_size > 1:
        # this node's address for gloo, NCCL and vLLM (exported to vLLM's processes too)
        host = configure_node_network(job.master_addr, job.nodes).address
        watchdog = Watchdog(
            store,
            job.rank,
            list(range(job.world_size)),
            describe=lambda r: describe_rank(roles, r),
            timeout_s=timeout_s,
            monitor=job.rank in monitor_ranks(job.world_size, job.local_world_size),
        )
        watchdog.watch_sigterm()
        channel = ControlChannel(store, job.rank, job.world_size, host, alive=watchdog.check)
    return RLJob(
        job=job,
        roles=roles,
        role=roles.role_of(job.rank),
        store=store,
        channel=channel,
        watchdog=watchdog,
        host=host,
        placements=placements,
    )
