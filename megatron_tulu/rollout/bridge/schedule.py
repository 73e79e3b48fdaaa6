"""What a refit costs the engine ranks beyond the plan's bytes: buckets, receive buffers, reload
calls and communicators (pure arithmetic over a :class:`~.planner.RefitPlan`, no torch).

**Buckets** (``rollout.refit_bucket_mb``): :func:`bucket_schedule` cuts the plan's reload groups,
in checkpoint order, into consecutive runs whose full-size receive buffers add up to at most
``bucket_bytes`` (at least one reload group per bucket). A bucket is the unit of messages and
acknowledgements; both sides derive the same buckets.

**Receive buffers** (``rollout.refit_receive_buffer_mb``). In checkpoint format each vLLM rank's
weight loader cuts its own shard out of the full-size tensor it is given, so a receiver writes the
slices it received into transient *full-size* buffers (one per HF tensor of the bucket, plus the
fp32 block scales for fp8_block) and hands them to ``reload_weights``; the fused parts of a module
(q/k/v, gate/up) must be in the same call. vLLM's layerwise reload may keep a tensor until its
layer is complete, and drops every reference when ``reload_weights`` returns. A receiver therefore
holds, while it receives bucket ``k`` of a reload call, at most the full-size buffers of the call's
buckets up to ``k`` plus the messages of bucket ``k``. :func:`receive_schedule` splits each
receiver's buckets greedily into reload calls whose worst case stays within
``receive_buffer_bytes`` and reports, per engine rank, that worst case
(``peak_receive_buffer_bytes``), the least any bound could be (its largest single bucket,
``min_receive_buffer_bytes``) and how many reload calls the worst case takes. A bucket that alone
exceeds the bound is a :class:`PlanError` (raise the bound or lower ``refit_bucket_mb``; one reload
group is indivisible: Llama 3.1 405B's embedding alone is 4.2 GB full-size in bf16).

**Communicators.** Every refit message is grouped point-to-point on the refit group, eagerly
connected (see :mod:`.transport`), so one NCCL communicator serves the whole group; unbatched
``send``/``recv`` on a lazily initialised torch NCCL group would create one 2-rank communicator
per (learner, engine rank) link, which :attr:`ReceiveSchedule.unbatched_pair_communicators` counts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from megatron_tulu.rollout.bridge.layouts import PlanError, box_numel, full_box, wire_bytes
from megatron_tulu.rollout.bridge.planner import RefitPlan, Transfer

__all__ = [
    "MIB",
    "Bucket",
    "ReceiveSchedule",
    "bucket_schedule",
    "buffer_bytes",
    "receive_schedule",
]

MIB = 2**20
Receiver = tuple[int, int]  # (engine, vLLM TP rank)

# One NCCL communicator per refit group: every member joins it eagerly and every message of the
# protocol is grouped point-to-point on it (transport.py explains why torch then never creates
# a pair communicator).
COMMUNICATORS_PER_GROUP = 1


@dataclass
class Bucket:
    index: int
    hf_names: list[str]
    full_bytes: int  # bytes of the bucket's full-size receive buffers (what a receiver allocates)
    transfers: list[Transfer] = field(default_factory=list)

    def message_bytes(self, receiver: Receiver) -> int:
        """Bytes ``receiver`` receives in this bucket (its message buffers, all senders together)."""
        return sum(t.nbytes for t in self.transfers if t.receiver == receiver)


def buffer_bytes(plan: RefitPlan, hf_name: str, elem_size: int) -> int:
    """Bytes of the full-size receive buffer(s) of one HF tensor: ``elem_size`` per element (the
    wire dtype) for an ``auto`` engine; for ``fp8_block`` e4m3 + fp32 block scales for the GEMM
    weights and bf16 for the rest (what :func:`~.transport.receive_refit` allocates)."""
    box = full_box(plan.hf_shapes[hf_name])
    if plan.engine.fp8:
        return wire_bytes(hf_name, box, "fp8_block", elem_size)
    return box_numel(box) * elem_size


def bucket_schedule(plan: RefitPlan, bucket_bytes: int, elem_size: int) -> list[Bucket]:
    """Consecutive reload groups, at most ``bucket_bytes`` of full-size buffers per bucket (at
    least one group each), with each bucket's transfers in plan order."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    current: list[str] = []
    size = 0
    for group in plan.reload_groups():
        gbytes = sum(buffer_bytes(plan, n, elem_size) for n in group)
        if current and size + gbytes > bucket_bytes:
            buckets.append(Bucket(len(buckets), current, size))
            current, size = [], 0
        current += list(group)
        size += gbytes
    if current:
        buckets.append(Bucket(len(buckets), current, size))
    where = {name: b for b in buckets for name in b.hf_names}
    for t in plan.transfers:
        where[t.hf_name].transfers.append(t)
    return buckets


def reload_calls(costs: list[tuple[int, int]], limit: int | None) -> tuple[list[list[int]], int]:
    """Greedy reload calls over one receiver's buckets, ``costs[k] = (full-size bytes, message
    bytes)``: bucket ``k`` joins the current call while the call's full-size bytes so far plus
    ``k``'s full-size and message bytes stay within ``limit`` (``None``: one call). Returns the
    calls (bucket indices) and their worst-case peak. The caller checks that every bucket fits
    alone."""
    calls: list[list[int]] = []
    held = 0  # full-size bytes of the current call's buckets (worst case: vLLM keeps them all)
    peak = 0
    for k, (full, msg) in enumerate(costs):
        if calls and (limit is None or held + full + msg <= limit):
            calls[-1].append(k)
        else:
            calls.append([k])
            held = 0
        peak = max(peak, held + full + msg)
        held += full
    return calls, peak


@dataclass
class ReceiveSchedule:
    """Buckets, per-receiver reload calls and buffer bounds of one refit (see the module docstring)."""

    plan: RefitPlan
    bucket_bytes: int
    receive_buffer_bytes: int | None  # None: unbounded (one reload call per refit)
    buckets: list[Bucket]
    calls: dict[Receiver, list[list[int]]]  # worst-case reload calls (bucket indices)
    peak: dict[Receiver, int]  # worst-case bytes held at once (<= receive_buffer_bytes)
    floor: dict[Receiver, int]  # the largest single bucket: the least any bound could be

    @property
    def communicators(self) -> int:
        return COMMUNICATORS_PER_GROUP

    @property
    def unbatched_pair_communicators(self) -> int:
        """2-rank NCCL communicators unbatched send/recv on a lazily initialised torch NCCL group
        would create: one per (learner rank, engine rank) pair that exchanges messages."""
        return len(self.plan.bytes_per_link())

    def peers(self) -> dict[Receiver, int]:
        """Learner ranks each engine rank receives from."""
        out: dict[Receiver, set[int]] = defaultdict(set)
        for t in self.plan.transfers:
            out[t.receiver].add(t.src_rank)
        return {r: len(out[r]) for r in self.plan.receivers()}

    def engine_ranks(self) -> list[dict]:
        """Per engine rank: communicators, peers, peak / minimum receive buffer, reload calls."""
        peers = self.peers()
        return [
            {
                "engine": e,
                "rank": n,
                "communicators": self.communicators,
                "peers": peers[(e, n)],
                "peak_receive_buffer_bytes": self.peak[(e, n)],
                "min_receive_buffer_bytes": self.floor[(e, n)],
                "reload_calls_worst_case": len(self.calls[(e, n)]),
            }
            for e, n in self.plan.receivers()
        ]

    def summary(self) -> dict:
        return {
            "communicators": self.communicators,
            "unbatched_pair_communicators": self.unbatched_pair_communicators,
            "bucket_bytes": self.bucket_bytes,
            "buckets": len(self.buckets),
            "largest_bucket_full_bytes": max((b.full_bytes for b in self.buckets), default=0),
            "receive_buffer_bytes": self.receive_buffer_bytes,
            "peak_receive_buffer_bytes": max(self.peak.values(), default=0),
            "min_receive_buffer_bytes": max(self.floor.values(), default=0),
            "engine_ranks": self.engine_ranks(),
        }


def receive_schedule(
    plan: RefitPlan, *, bucket_bytes: int, elem_size: int, receive_buffer_bytes: int | None
) -> ReceiveSchedule:
    """Buckets and, per engine rank, reload calls bounded by ``receive_buffer_bytes`` (``None``:
    unbounded). Raises :class:`PlanError` when one bucket alone exceeds the bound."""
    if receive_buffer_bytes is not None and receive_buffer_bytes <= 0:
        raise PlanError(f"the refit receive buffer bound must be positive, got {receive_buffer_bytes} B")
    buckets = bucket_schedule(plan, bucket_bytes, elem_size)
    msg: dict[Receiver, list[int]] = {r: [0] * len(buckets) for r in plan.receivers()}
    for b in buckets:
        for t in b.transfers:
            msg[t.receiver][b.index] += t.nbytes
    calls, peak, floor = {}, {}, {}
    for r in plan.receivers():
        costs = [(b.full_bytes, msg[r][b.index]) for b in buckets]
        floor[r] = max((f + m for f, m in costs), default=0)
        if receive_buffer_bytes is not None and floor[r] > receive_buffer_bytes:
            k = max(range(len(costs)), key=lambda i: sum(costs[i]))
            raise PlanError(_too_small(buckets[k], costs[k], receive_buffer_bytes, bucket_bytes))
        calls[r], peak[r] = reload_calls(costs, receive_buffer_bytes)
    return ReceiveSchedule(plan, bucket_bytes, receive_buffer_bytes, buckets, calls, peak, floor)


def _too_small(bucket: Bucket, cost: tuple[int, int], limit: int, bucket_bytes: int) -> str:
    full, msg = cost
    need = -(-(full + msg) // MIB)
    names = bucket.hf_names if len(bucket.hf_names) <= 3 else [*bucket.hf_names[:2], "..."]
    fix = f"raise rollout.refit_receive_buffer_mb to at least {need}"
    if len(bucket.hf_names) > 1 and bucket_bytes > limit // 2:
        fix += " or lower rollout.refit_bucket_mb"
    return (
        f"rollout.refit_receive_buffer_mb={limit / MIB:g} cannot hold one refit bucket: "
        f"{', '.join(names)} need {full / MIB:,.0f} MiB of full-size receive buffers (each vLLM rank's "
        f"loader cuts its shard out of a full-size tensor) + {msg / MIB:,.0f} MiB received; {fix}"
    )
