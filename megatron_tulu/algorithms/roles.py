"""Which global rank of an RLVR ``torchrun`` world does what (pure: no processes, no torch).

An RLVR job is one world of ``nodes x gpus_per_node`` ranks split into two roles:

- **learner** ranks run the Megatron policy, reference and value models under the learner layout
  TP x PP x DP; coordinates follow Megatron-Core's default order (TP fastest, then DP, then PP):
  ``learner rank = tp + TP * (dp + DP * pp)``
  (:func:`megatron_tulu.config.validate.learner_global_rank`, which the refit planner uses too);
- **engine** ranks run vLLM: ``num_engines`` engines of ``engine_tp`` ranks each.

Placement ``dedicated`` (Tülu 3 §6.3): learners take global ranks ``0 .. L-1`` (so learner rank ==
global rank) and the engines the last ``num_engines * engine_tp`` ranks, engine ``e``'s TP rank
``n`` at ``L + e * engine_tp + n`` (the placement the refit planner assumes). An engine either sits
inside one node or covers whole nodes (16-way TP over two 8-GPU nodes, as Tülu 3's 405B run).
Placement ``colocated``: every rank is a learner, and engine ``e``'s rank ``n`` shares GPU
``e * engine_tp + n`` with a learner rank.

:func:`assign_roles` validates everything before any process group exists and raises
:class:`~megatron_tulu.config.validate.LayoutError` with what to change.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from megatron_tulu.config.schema import ModelConfig, ParallelConfig, RolloutConfig
from megatron_tulu.config.validate import LayoutError, learner_coords, learner_global_rank, validate_layout

__all__ = [
    "EngineCoord",
    "LayoutError",
    "LearnerCoord",
    "RankRole",
    "RoleAssignment",
    "assign_roles",
    "check_engine_model",
    "check_rollout_batch",
    "format_ranges",
    "world_from_env",
]

PLACEMENTS = ("dedicated", "colocated")


@dataclass(frozen=True)
class LearnerCoord:
    tp: int
    pp: int
    dp: int


@dataclass(frozen=True)
class EngineCoord:
    engine: int
    tp_rank: int


@dataclass(frozen=True)
class RankRole:
    """One global rank: its node, local rank, and learner and/or engine coordinates."""

    rank: int
    node: int
    local_rank: int
    learner: LearnerCoord | None = None
    engine: EngineCoord | None = None

    @property
    def is_learner(self) -> bool:
        return self.learner is not None

    @property
    def is_engine(self) -> bool:
        return self.engine is not None

    @property
    def kind(self) -> str:
        """``learner``, ``engine`` or ``learner+engine`` (colocated)."""
        if self.learner is not None and self.engine is not None:
            return "learner+engine"
        return "learner" if self.learner is not None else "engine"


@dataclass(frozen=True)
class RoleAssignment:
    nodes: int
    gpus_per_node: int
    placement: str
    tp: int
    pp: int
    dp: int
    engine_tp: int
    num_engines: int
    ranks: tuple[RankRole, ...]

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def learner_world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def engine_world_size(self) -> int:
        return self.engine_tp * self.num_engines

    @property
    def learner_offset(self) -> int:
        """Global rank of learner rank 0 (always 0: learners come first)."""
        return 0

    @property
    def engine_offset(self) -> int:
        """Global rank of engine 0's TP rank 0."""
        return self.learner_world_size if self.placement == "dedicated" else 0

    def role_of(self, rank: int) -> RankRole:
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} outside world of {self.world_size}")
        return self.ranks[rank]

    def learner_rank(self, tp: int, pp: int, dp: int) -> int:
        """Global rank of learner coordinates (Megatron order: TP fastest, then DP, then PP)."""
        return self.learner_offset + learner_global_rank(tp, pp, dp, self.tp, self.dp)

    def engine_rank(self, engine: int, tp_rank: int) -> int:
        """Global rank (GPU) of TP rank ``tp_rank`` of engine ``engine``."""
        if not (0 <= engine < self.num_engines and 0 <= tp_rank < self.engine_tp):
            raise IndexError(f"no engine rank ({engine}, {tp_rank})")
        return self.engine_offset + engine * self.engine_tp + tp_rank

    def learner_ranks(self) -> list[int]:
        return [r.rank for r in self.ranks if r.is_learner]

    def engine_ranks(self, engine: int | None = None) -> list[int]:
        return [
            r.rank
            for r in self.ranks
            if r.engine is not None and (engine is None or r.engine.engine == engine)
        ]

    def nodes_of(self, ranks: list[int]) -> list[int]:
        return sorted({r // self.gpus_per_node for r in ranks})

    def headline(self) -> str:
        lw, ew = self.learner_world_size, self.engine_world_size
        where = (
            f"on the last {ew} GPUs"
            if self.placement == "dedicated"
            else f"sharing GPUs 0-{ew - 1} with learners"
        )
        return (
            f"world {self.world_size} = {self.nodes} nodes x {self.gpus_per_node} GPUs; "
            f"learners TP{self.tp} x PP{self.pp} x DP{self.dp} = {lw} GPUs; "
            f"{self.num_engines} vLLM engine(s) x TP{self.engine_tp} = {ew} GPUs {where} ({self.placement})"
        )

    def describe(self) -> str:
        """Roles compressed into rank ranges (one line per PP stage / engine block)."""
        return self.headline() + "\n" + format_ranges(self)


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _rank_range(ranks: list[int]) -> str:
    return _span(ranks) if ranks == list(range(ranks[0], ranks[-1] + 1)) else ",".join(map(str, ranks))


def format_ranges(assignment: RoleAssignment) -> str:
    """One row per maximal run of consecutive ranks with the same (PP stage, engine) key."""
    groups: list[list[RankRole]] = []
    key_prev = None
    for r in assignment.ranks:
        key = (
            r.learner.pp if r.learner else None,
            r.engine.engine if r.engine else None,
        )
        if groups and key == key_prev:
            groups[-1].append(r)
        else:
            groups.append([r])
        key_prev = key
    rows = []
    for g in groups:
        ranks = [r.rank for r in g]
        parts = []
        if g[0].learner is not None:
            lc = [r.learner for r in g if r.learner]
            parts.append(
                f"learner pp{lc[0].pp:<{len(str(assignment.pp - 1))}}  tp {_span([c.tp for c in lc])}  dp {_span([c.dp for c in lc])}"
            )
        if g[0].engine is not None:
            ec = [r.engine for r in g if r.engine]
            parts.append(f"engine {ec[0].engine}  tp-rank {_span([c.tp_rank for c in ec])}")
        rows.append(
            [
                f"ranks {_rank_range(ranks)}",
                " + ".join(parts),
                f"nodes {_span(assignment.nodes_of(ranks))}",
                f"{len(ranks)} GPUs",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def check_engine_model(model: ModelConfig, engine_tp: int) -> None:
    """vLLM's sharding rules for a TP=``engine_tp`` engine (same rules as the refit planner)."""
    problems = []
    for label, value in (
        ("num_attention_heads", model.num_attention_heads),
        ("ffn_hidden_size", model.ffn_hidden_size),
    ):
        if value % engine_tp:
            problems.append(f"{label}={value} is not divisible by rollout.engine_tp={engine_tp}")
    g = model.num_query_groups
    if engine_tp % g and g % engine_tp:
        problems.append(
            f"num_query_groups={g} and rollout.engine_tp={engine_tp}: one must divide the other "
            "(vLLM splits KV heads when TP <= groups and replicates them when TP > groups)"
        )
    if problems:
        good = [n for n in range(1, 65) if _engine_ok(model, n)]
        raise LayoutError(
            f"vLLM engine TP{engine_tp} cannot shard model '{model.name}':\n  - "
            + "\n  - ".join(problems)
            + f"\n  valid rollout.engine_tp values: {good}"
        )


def _engine_ok(model: ModelConfig, n: int) -> bool:
    g = model.num_query_groups
    return (
        model.num_attention_heads % n == 0 and model.ffn_hidden_size % n == 0 and (n % g == 0 or g % n == 0)
    )


def check_rollout_batch(rollouts_per_step: int, dp: int, micro_batch_size: int = 1) -> int:
    """Rollouts per step must split evenly over DP ranks and micro-batches; returns micro-batches
    per DP rank."""
    if rollouts_per_step % (dp * micro_batch_size):
        raise LayoutError(
            f"{rollouts_per_step} rollouts per step (rlvr.prompts_per_step x rollout.samples_per_prompt) "
            f"do not split over learner DP{dp} x train.micro_batch_size={micro_batch_size}; pick a layout "
            f"whose DP divides {rollouts_per_step} or change the batch"
        )
    return rollouts_per_step // (dp * micro_batch_size)


def _suggest_engines(world: int, mp: int, engine_tp: int) -> str:
    options = []
    for k in range(1, world // engine_tp + 1):
        rest = world - k * engine_tp
        if rest > 0 and rest % mp == 0:
            options.append(f"num_engines={k} (learner DP{rest // mp})")
    return "; ".join(options[:4]) if options else "none with this TP x PP"


def assign_roles(
    model: ModelConfig,
    parallel: ParallelConfig,
    rollout: RolloutConfig,
    nodes: int,
    gpus_per_node: int = 8,
    allow_multinode_engine: bool = True,
) -> RoleAssignment:
    """Validate the layout and give every global rank its role (see the module docstring)."""
    if nodes < 1 or gpus_per_node < 1:
        raise LayoutError(f"need nodes >= 1 and gpus_per_node >= 1, got {nodes} x {gpus_per_node}")
    if rollout.placement not in PLACEMENTS:
        raise LayoutError(f"rollout.placement must be one of {PLACEMENTS}, got {rollout.placement!r}")
    etp, ne = rollout.engine_tp, rollout.num_engines
    if etp < 1 or ne < 1:
        raise LayoutError(f"rollout.engine_tp and rollout.num_engines must be >= 1, got {etp}, {ne}")
    if parallel.cp != 1 or parallel.ep != 1:
        raise LayoutError("RLVR learners support cp=1 and ep=1 (the refit planner covers no other case)")
    world = nodes * gpus_per_node
    engine_gpus = etp * ne

    # --- engines: whole nodes or inside one node
    if etp > gpus_per_node:
        if not allow_multinode_engine:
            raise LayoutError(
                f"rollout.engine_tp={etp} exceeds a node of {gpus_per_node} GPUs; multi-node engines are "
                "disabled (allow_multinode_engine=False)"
            )
        if etp % gpus_per_node:
            raise LayoutError(
                f"rollout.engine_tp={etp} spans nodes of {gpus_per_node} GPUs but is not a multiple of "
                f"{gpus_per_node}; a multi-node engine must cover whole nodes"
            )
    elif gpus_per_node % etp:
        raise LayoutError(
            f"rollout.engine_tp={etp} does not divide gpus_per_node={gpus_per_node}; an engine would "
            f"straddle two nodes (use a divisor of {gpus_per_node} or a multiple of it)"
        )
    check_engine_model(model, etp)

    mp = parallel.tp * parallel.pp
    # shape checks first (heads / groups / layers vs TP and PP), whatever the world size
    validate_layout(model, dataclasses.replace(parallel, dp=-1), mp)
    if rollout.placement == "dedicated":
        if engine_gpus >= world:
            raise LayoutError(
                f"not enough GPUs: {ne} engine(s) x TP{etp} = {engine_gpus} GPUs leave "
                f"{world - engine_gpus} of {world} for learners (need at least TP{parallel.tp} x "
                f"PP{parallel.pp} = {mp}); add nodes or use rollout.placement=colocated"
            )
        learners = world - engine_gpus
        if parallel.dp > 0 and parallel.dp * mp != learners:
            raise LayoutError(
                f"parallel.dp={parallel.dp} needs {parallel.dp * mp} learner GPUs but {world} GPUs minus "
                f"{engine_gpus} engine GPUs leave {learners}; set parallel.dp=-1 or change nodes / engines"
            )
        if learners % mp:
            raise LayoutError(
                f"{learners} learner GPUs ({world} - {ne} engine(s) x TP{etp}) are not divisible by "
                f"TP{parallel.tp} x PP{parallel.pp} = {mp}; options at {world} GPUs: "
                f"{_suggest_engines(world, mp, etp)}"
            )
        # engines fill the world from the end, so a multi-node engine (TP a multiple of the node
        # size) starts on a node boundary and a small one (TP dividing the node) stays inside one
        start = learners
    else:
        if engine_gpus > world:
            raise LayoutError(
                f"not enough GPUs: colocated engines need {ne} x TP{etp} = {engine_gpus} GPUs, the world "
                f"has {world}"
            )
        learners, start = world, 0
    dp = validate_layout(model, parallel, learners)

    roles = []
    for rank in range(world):
        learner = engine = None
        if rank < learners:
            learner = LearnerCoord(*learner_coords(rank, parallel.tp, dp))
        if start <= rank < start + engine_gpus:
            e, n = divmod(rank - start, etp)
            engine = EngineCoord(e, n)
        roles.append(RankRole(rank, rank // gpus_per_node, rank % gpus_per_node, learner, engine))
    return RoleAssignment(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        placement=rollout.placement,
        tp=parallel.tp,
        pp=parallel.pp,
        dp=dp,
        engine_tp=etp,
        num_engines=ne,
        ranks=tuple(roles),
    )


def world_from_env(env: Mapping[str, str] | None = None) -> tuple[int | None, int | None]:
    """(nodes, gpus_per_node) from Slurm (``SLURM_NNODES``, ``SLURM_GPUS_ON_NODE``) or torchrun
    (``WORLD_SIZE`` / ``LOCAL_WORLD_SIZE``); ``None`` for what the environment does not say."""
    env = os.environ if env is None else env

    def num(key: str) -> int | None:
        value = env.get(key, "")
        value = value.split("(")[0].split(",")[0].strip()  # e.g. SLURM_GPUS_ON_NODE="8", "8(x32)"
        return int(value) if value.isdigit() else None

    gpus = num("SLURM_GPUS_ON_NODE") or num("LOCAL_WORLD_SIZE")
    nodes = num("SLURM_NNODES") or num("SLURM_JOB_NUM_NODES")
    if nodes is None and gpus and num("WORLD_SIZE"):
        nodes = num("WORLD_SIZE") // gpus
    return nodes, gpus
