"""The rollout engines of one RL job, driven from learner rank 0 over the job's control channel.

Who does what (roles from :func:`megatron_tulu.algorithms.roles.assign_roles`):

- engine **leader** (an engine's TP rank 0): runs the vLLM engine (:class:`RolloutEngine`; vLLM
  starts one worker process per TP rank of its node) and answers the driver's commands;
- engine **node host** (the first rank of a multi-node engine on each further node): runs that
  node's headless vLLM workers (:func:`run_headless_workers`) until the driver says stop;
- other engine ranks: hold their place in the world (their GPU is one of the engine's workers)
  and wait for stop;
- the **driver** (learner rank 0): :class:`EngineFleet` splits prompts across engines, gathers
  outputs back in prompt order, and starts every engine's refit while all learner ranks send.

With ``colocated`` placement the engine leaders are learner ranks: the driver's own engine is
called in-process, any other leader answers from a service thread beside its training. Engines
never use the default process group, so Megatron sees the learners only.

Every wait here is as long as the work behind it (an engine start, a generation): the control
channel polls and the watchdog, not a collective timeout, ends a wait whose peer died.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from megatron_tulu.engine.control import DRIVER, ControlChannel
from megatron_tulu.engine.job import lookup, publish
from megatron_tulu.engine.network import port_for_foreign_server
from megatron_tulu.rollout.bridge.transport import RefitSpec
from megatron_tulu.rollout.engine import Rollout, RolloutEngine, SamplingSettings, run_headless_workers

__all__ = ["EngineFleet", "EngineOptions", "EnginePlacement", "serve_engine_rank", "split_evenly"]


# DRIVER (global rank 0) is learner rank 0: learners come first in every placement.
# EngineOptions fields that are RolloutEngine keyword arguments (the rest say where engines run)
ENGINE_KWARGS = (
    "tp dtype seed memory_fraction max_model_len enforce_eager logprobs_mode weight_dtype"
).split()


@dataclass(frozen=True)
class EngineOptions:
    """What every engine of the job is started with (one definition for leaders and node hosts)."""

    model: str
    tp: int
    dtype: str
    seed: int
    memory_fraction: float
    max_model_len: int
    enforce_eager: bool = True
    # raw_logprobs: the model's distribution (temperature 1); processed_logprobs: the distribution
    # sampled from (after temperature / top-p), which importance sampling against the engine needs
    logprobs_mode: str = "raw_logprobs"
    # rollout.weight_dtype: "fp8_block" engines start on an offline blockwise-FP8 export of `model`
    # (written under export_dir, one directory per engine rank), or on `model` if it is one already
    weight_dtype: str = "auto"
    export_dir: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """The RolloutEngine keyword arguments these options set."""
        return {name: getattr(self, name) for name in ENGINE_KWARGS}

    def engine_model(self, rank: int) -> str:
        """The directory this rank's engine (or headless workers) start from: ``model`` itself, or
        for fp8_block its FP8 export, written by this process into a rank-private directory under
        ``export_dir`` (each node needs the files; a pre-exported FP8 ``model`` is used as is)."""
        from megatron_tulu.models.fp8_export import engine_model_dir

        out = Path(self.export_dir) / f"{self.weight_dtype}-rank{rank}" if self.export_dir else None
        return str(engine_model_dir(self.model, self.weight_dtype, out))


@dataclass(frozen=True)
class EnginePlacement:
    """Where one engine's ranks are: global ranks in TP order and their nodes."""

    index: int
    ranks: tuple[int, ...]
    nodes: tuple[int, ...]  # node of each rank

    @property
    def leader(self) -> int:
        return self.ranks[0]

    @property
    def node_list(self) -> list[int]:
        return sorted(set(self.nodes))

    def node_host(self, node: int) -> int:
        """The rank that runs this engine's vLLM processes on ``node`` (its first rank there)."""
        return next(r for r, n in zip(self.ranks, self.nodes) if n == node)

    def local_ranks_on(self, node: int, gpus_per_node: int) -> list[int]:
        return [r % gpus_per_node for r, n in zip(self.ranks, self.nodes) if n == node]


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``[start, end)`` ranges covering ``range(n)``, sizes differing by <= 1."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


class EngineError(RuntimeError):
    """An engine rank failed a command; the message names the rank."""


# ----------------------------------------------------------------------------------- engine side
def _pin_devices(local_ranks: list[int]) -> None:
    """On GPUs, vLLM's workers of this node take the devices of this engine's ranks on the node."""
    import torch

    if torch.cuda.is_available() or os.environ.get("CUDA_VISIBLE_DEVICES"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(max(local_ranks) + 1)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[i] for i in local_ranks)


class _LeaderService:
    """Executes driver commands on an engine leader."""

    def __init__(self, engine: RolloutEngine, rank: int):
        self.engine, self.rank = engine, rank

    def handle(self, command: str, args: dict[str, Any]) -> Any:
        if command == "ready":  # answered once the engine is built (the driver's wait_ready)
            return True
        if command == "generate":
            return self.engine.generate(args["prompts"], args["settings"])
        if command == "join_refit":
            spec = RefitSpec.from_dict(args["spec"])
            return self.engine.join_refit_group(
                args["host"], args["port"], spec, args["engine_index"], timeout_s=args["timeout_s"]
            )
        if command == "refit":
            return self.engine.refit(**args)
        if command == "logprobs":
            return self.engine.sequence_logprobs(args["sequences"])
        raise EngineError(f"engine rank {self.rank}: unknown command {command!r}")


def _serve(channel: ControlChannel, rank: int, service: _LeaderService | None) -> None:
    """Answer the driver until it says stop. Every reply is ("ok", value) or ("error", text)."""
    while True:
        command, args = channel.recv(DRIVER)
        if command == "stop":
            channel.send(("ok", None), DRIVER)
            return
        try:
            if service is None:
                raise EngineError(f"rank {rank} hosts no engine leader (command {command!r})")
            reply = ("ok", service.handle(command, args))
        except Exception as exc:  # reported to the driver, which raises naming this rank
            reply = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        channel.send(reply, DRIVER)


def serve_engine_rank(
    channel: ControlChannel,
    store,
    rank: int,
    placement: EnginePlacement,
    options: EngineOptions,
    gpus_per_node: int,
    host: str,
    alive=None,
) -> None:
    """Main loop of a rank whose role is engine-only (dedicated placement): start this rank's
    share of its engine (leader, node host or nothing), serve the driver, shut down on stop."""
    my_node = placement.nodes[placement.ranks.index(rank)]
    multinode = len(placement.node_list) > 1
    engine = executor = None
    try:
        if rank == placement.leader or rank == placement.node_host(my_node):
            _pin_devices(placement.local_ranks_on(my_node, gpus_per_node))
            kwargs = options.kwargs()
            if multinode:
                key = f"engine/{placement.index}/master"
                if rank == placement.leader:  # vLLM binds it: a port no outgoing connection takes
                    publish(store, key, (host, port_for_foreign_server(host)))
                master_addr, master_port = lookup(store, key, alive=alive)
                kwargs.update(
                    nnodes=len(placement.node_list),
                    node_rank=placement.node_list.index(my_node),
                    master_addr=master_addr,
                    master_port=master_port,
                )
            if rank == placement.leader:
                engine = RolloutEngine(options.engine_model(rank), **kwargs)
            else:
                executor = run_headless_workers(options.engine_model(rank), **kwargs)
        _serve(channel, rank, _LeaderService(engine, rank) if engine is not None else None)
    finally:
        if engine is not None:
            engine.close()
        if executor is not None:
            executor.shutdown()


class ColocatedEngineThread:
    """An engine leader inside a learner process (colocated placement, not the driver): serves the
    driver from a thread while the main thread trains."""

    def __init__(self, channel: ControlChannel, rank: int, engine: RolloutEngine):
        self.engine = engine
        self._thread = threading.Thread(
            target=_serve,
            args=(channel, rank, _LeaderService(engine, rank)),
            name="engine-service",
            daemon=True,
        )
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)


# ----------------------------------------------------------------------------------- driver side
class EngineFleet:
    """The driver's view of every engine (on learner rank 0 only).

    ``local`` maps an engine index to the :class:`RolloutEngine` living in this process
    (colocated placement); every other engine is reached through its leader rank."""

    def __init__(
        self,
        channel: ControlChannel | None,
        placements: Sequence[EnginePlacement],
        local: dict[int, RolloutEngine] | None = None,
        stop_ranks: Sequence[int] = (),
    ):
        self.channel, self.placements = channel, list(placements)
        self.local = dict(local or {})
        # every rank that serves the driver (remote leaders, node hosts, idle engine ranks)
        self.stop_ranks = list(stop_ranks)
        self._lock = threading.Lock()  # one conversation at a time (async generation thread)

    @property
    def num_engines(self) -> int:
        return len(self.placements)

    def _call_all(
        self, command: str, per_engine_args: list[dict[str, Any]], local_work=None, run_local: bool = True
    ) -> list[Any]:
        """Send ``command`` to every remote leader, meanwhile run it on the engines in this process
        (unless ``run_local`` is false: ``local_work`` then does their part) and ``local_work``,
        then gather the replies in engine order."""
        with self._lock:
            for p, args in zip(self.placements, per_engine_args):
                if p.index not in self.local:
                    self.channel.send((command, args), p.leader)
            results: list[Any] = [None] * len(self.placements)
            for p, args in zip(self.placements, per_engine_args):
                if run_local and p.index in self.local:
                    results[p.index] = _LeaderService(self.local[p.index], DRIVER).handle(command, args)
            if local_work is not None:
                local_work()
            for p in self.placements:
                if p.index not in self.local:
                    status, value = self._recv(p, command)
                    if status != "ok":
                        raise EngineError(
                            f"engine {p.index} (leader rank {p.leader}) failed {command}: {value}"
                        )
                    results[p.index] = value
            return results

    def _recv(self, p: EnginePlacement, command: str) -> tuple[str, Any]:
        try:
            return self.channel.recv(p.leader)
        except RuntimeError as exc:  # the leader's process is gone (connection closed) or hung
            raise EngineError(
                f"engine {p.index} (leader rank {p.leader}) lost during {command}: {exc}"
            ) from exc

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[Rollout]:
        """Prompts split into contiguous blocks, one per engine; prompt ``i`` is sampled with seed
        ``settings.seed + i`` whichever engine gets it; rollouts come back prompt-major."""
        ranges = split_evenly(len(prompts), self.num_engines)
        args = []
        for start, end in ranges:
            seed = None if settings.seed is None else settings.seed + start
            args.append(
                {"prompts": [list(p) for p in prompts[start:end]], "settings": replace(settings, seed=seed)}
            )
        out: list[Rollout] = []
        for (start, _), rollouts in zip(ranges, self._call_all("generate", args)):
            for r in rollouts:
                r.prompt_index += start
            out.extend(rollouts)
        return out

    def wait_ready(self) -> None:
        """Wait until every remote engine is built and serving (as long as loading takes: the
        control channel polls), so what follows -- the refit group's formation -- is quick."""
        self._call_all("ready", [{} for _ in self.placements], run_local=False)

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]], engine: int = 0) -> list[list[float]]:
        """Per-token log-probs of ``sequences`` under one engine's current weights (verification)."""
        args = {"sequences": [list(s) for s in sequences]}
        if engine in self.local:
            return self.local[engine].sequence_logprobs(args["sequences"])
        leader = self.placements[engine].leader
        with self._lock:
            self.channel.send(("logprobs", args), leader)
            status, value = self._recv(self.placements[engine], "logprobs")
        if status != "ok":
            raise EngineError(f"engine {engine} (leader rank {leader}) failed logprobs: {value}")
        return value

    def join_refit(self, spec: RefitSpec, host: str, port: int, timeout_s: float, join_learner) -> None:
        """Every engine joins the refit group while this rank (``join_learner``) joins as learner 0.
        Local engines join from a thread (the group forms only once every member is in)."""
        threads = []
        base = {"host": host, "port": port, "spec": spec.to_dict(), "timeout_s": timeout_s}
        args = [dict(base, engine_index=p.index) for p in self.placements]

        def local_and_learner() -> None:
            for idx, engine in self.local.items():
                t = threading.Thread(
                    target=engine.join_refit_group,
                    args=(host, port, spec, idx),
                    kwargs={"timeout_s": timeout_s},
                )
                t.start()
                threads.append(t)
            join_learner()
            for t in threads:
                t.join()

        # remote engines are asked first, then the local members join, then the replies come
        self._call_all("join_refit", args, local_and_learner, run_local=False)

    def refit(self, send_learner, *, bucket_bytes: int, checksums: bool, timeout_s: float) -> list[dict]:
        """Every engine receives while this rank sends its learner share (``send_learner``); returns
        the stats of every engine worker (``bytes_received``, ``shard_bytes`` ...)."""
        args = {"bucket_bytes": bucket_bytes, "checksums": checksums, "timeout_s": timeout_s}
        futures = {idx: eng.refit(**args, wait=False) for idx, eng in self.local.items()}
        results = self._call_all("refit", [args for _ in self.placements], send_learner, run_local=False)
        for idx, future in futures.items():
            results[idx] = future.result()
        return [stats for per_engine in results for stats in per_engine]

    def close(self) -> None:
        """Stop every engine rank (remote leaders shut their engines down) and close local engines."""
        try:
            if self.channel is not None:
                with self._lock:
                    for rank in self.stop_ranks:
                        self.channel.send(("stop", {}), rank)
                    for rank in self.stop_ranks:
                        self.channel.recv(rank)
        finally:
            for engine in self.local.values():
                engine.close()
