"""The refit plan: which learner rank sends which slice to which vLLM rank (pure, no processes).

For every engine ``e``, vLLM rank ``n`` and HF tensor ``t`` the destination is
``vllm_region(t, n)`` (the box of the full-size HF tensor that rank's weight loader narrows out).
Each learner piece of ``t`` (see :func:`~megatron_tulu.rollout.bridge.layouts.learner_pieces`)
that intersects it becomes one :class:`Transfer`; pieces are maximal contiguous runs in both the
HF tensor and the Megatron local tensor (a vLLM rank's q rows of one query group are one run in
Megatron's interleaved QKV), and adjacent transfers between the same pair that stay contiguous on
both sides are merged. Every destination element is covered exactly once, so a vLLM rank
receives exactly its shard (``received / shard == 1.00``).

Senders: a slice held by several ranks (DP replicas; norms on every TP rank; tied embeddings on
the first and last stage) is sent by exactly one of them, chosen greedily (largest transfers
first, to the candidate with the fewest bytes so far), so all learner ranks share the load.

Receivers allocate a transient full-size zero buffer per HF tensor of a reload group
(:func:`~megatron_tulu.rollout.bridge.layouts.fused_group`), write each received
``dst_slice`` into it and call vLLM's ``reload_weights`` in HF checkpoint format.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from megatron_tulu.rollout.bridge.layouts import (
    Box,
    EngineLayout,
    LearnerLayout,
    LearnerPiece,
    MegatronParam,
    PlanError,
    box_numel,
    check_fp8_alignment,
    fused_group,
    hf_shape,
    hf_tensor_names,
    intersect,
    learner_global_rank,
    learner_pieces,
    params_by_hf_name,
    vllm_region,
    wire_bytes,
)

__all__ = [
    "NaiveSummary",
    "PlanError",
    "RefitPlan",
    "Transfer",
    "naive_broadcast_summary",
    "plan_refit",
    "predict_link_seconds",
]

Receiver = tuple[int, int]  # (engine, vLLM TP rank)


@dataclass(frozen=True)
class Transfer:
    """Send ``src_param``'s local ``src_slice`` from learner ``src_rank`` to vLLM rank
    ``dst_rank`` of engine ``dst_engine``, which writes it at ``dst_slice`` of HF tensor ``hf_name``."""

    hf_name: str
    src_rank: int
    src_param: MegatronParam
    src_slice: Box
    dst_engine: int
    dst_rank: int
    dst_slice: Box
    nbytes: int

    @property
    def receiver(self) -> Receiver:
        return (self.dst_engine, self.dst_rank)


def engine_global_rank(learner: LearnerLayout, engine: EngineLayout, engine_idx: int, rank: int) -> int:
    """Global rank (placement order) of a vLLM rank: engines sit after the learner ranks."""
    return learner.world_size + engine_idx * engine.tp + rank


def _node_bw(src: int, dst: int, gpus_per_node: int, intra: float, inter: float) -> float:
    return intra if src // gpus_per_node == dst // gpus_per_node else inter


def predict_link_seconds(
    links: dict[tuple[int, int], int], intra_node_gbps: float, inter_node_gbps: float, gpus_per_node: int
) -> tuple[float, dict[int, float], dict[int, float]]:
    """Time model shared by our plan and the naive baseline.

    ``links`` maps (sender global rank, receiver global rank) to bytes. Every rank has one NIC of
    ``inter_node_gbps`` (Gbit/s) and NVLink of ``intra_node_gbps`` to ranks of its node; sends and
    receives are full duplex, all ranks work in parallel and a rank's send (receive) time is the
    sum over its links of bytes / link bandwidth (its links share its NIC, so they add up). The
    prediction is the slowest rank. Not modelled: latency, per-message overhead, congestion in the
    fabric, and the receivers' ``reload_weights`` time.
    """
    send: dict[int, float] = defaultdict(float)
    recv: dict[int, float] = defaultdict(float)
    intra, inter = intra_node_gbps * 1e9 / 8, inter_node_gbps * 1e9 / 8
    for (src, dst), nbytes in links.items():
        t = nbytes / _node_bw(src, dst, gpus_per_node, intra, inter)
        send[src] += t
        recv[dst] += t
    worst = max([0.0, *send.values(), *recv.values()])
    return worst, dict(send), dict(recv)


def _stats(values) -> dict[str, float]:
    values = list(values)
    if not values:
        return {"count": 0, "min": 0, "mean": 0.0, "max": 0, "total": 0}
    return {
        "count": len(values),
        "min": min(values),
        "mean": sum(values) / len(values),
        "max": max(values),
        "total": sum(values),
    }


@dataclass
class RefitPlan:
    learner: LearnerLayout
    engine: EngineLayout
    transfers: list[Transfer]
    hf_shapes: dict[str, tuple[int, ...]]
    # expected bytes of every receiver's shard (the boxes its loaders read), summed over tensors,
    # in the engine's weight dtype (fp8_block: e4m3 + fp32 block scales for the GEMM weights)
    shard_bytes: dict[Receiver, int] = field(default_factory=dict)
    # the same shard at 2 bytes per element (bf16): the yardstick of fp8_block's saving
    bf16_shard_bytes: dict[Receiver, int] = field(default_factory=dict)

    @property
    def weight_dtype(self) -> str:
        return self.engine.weight_dtype

    # ---- per-party totals
    def bytes_per_sender(self) -> dict[int, int]:
        out: dict[int, int] = defaultdict(int)
        for t in self.transfers:
            out[t.src_rank] += t.nbytes
        return dict(out)

    def bytes_per_receiver(self) -> dict[Receiver, int]:
        out: dict[Receiver, int] = {r: 0 for r in self.receivers()}
        for t in self.transfers:
            out[t.receiver] += t.nbytes
        return out

    def bytes_per_link(self) -> dict[tuple[int, Receiver], int]:
        out: dict[tuple[int, Receiver], int] = defaultdict(int)
        for t in self.transfers:
            out[(t.src_rank, t.receiver)] += t.nbytes
        return dict(out)

    def messages_per_sender(self) -> dict[int, int]:
        out: dict[int, int] = defaultdict(int)
        for t in self.transfers:
            out[t.src_rank] += 1
        return dict(out)

    def messages_per_receiver(self) -> dict[Receiver, int]:
        out: dict[Receiver, int] = {r: 0 for r in self.receivers()}
        for t in self.transfers:
            out[t.receiver] += 1
        return out

    def receivers(self) -> list[Receiver]:
        return [(e, n) for e in range(self.engine.num_engines) for n in range(self.engine.tp)]

    def senders(self) -> list[int]:
        return sorted({t.src_rank for t in self.transfers})

    def receive_ratio(self) -> dict[Receiver, float]:
        """Bytes received / bytes of the receiver's shard (1.0 for every receiver, by construction)."""
        got = self.bytes_per_receiver()
        return {r: (got[r] / self.shard_bytes[r] if self.shard_bytes[r] else 1.0) for r in got}

    def bf16_ratio(self) -> dict[Receiver, float]:
        """Bytes received / the receiver's shard in bf16 (fp8_block: about 0.5 for large models)."""
        got = self.bytes_per_receiver()
        return {r: (got[r] / self.bf16_shard_bytes[r] if self.bf16_shard_bytes[r] else 1.0) for r in got}

    def for_receiver(self, engine: int, rank: int) -> list[Transfer]:
        return [t for t in self.transfers if t.receiver == (engine, rank)]

    def for_sender(self, src_rank: int) -> list[Transfer]:
        return [t for t in self.transfers if t.src_rank == src_rank]

    def reload_groups(self) -> list[tuple[str, ...]]:
        """HF tensors grouped as they must be passed to one ``reload_weights`` call, in order."""
        seen, out = set(), []
        for name in self.hf_shapes:
            group = fused_group(name)
            if group[0] not in seen:
                seen.add(group[0])
                out.append(group)
        return out

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.transfers)

    # ---- timing
    def predict_seconds(self, intra_node_gbps: float, inter_node_gbps: float, gpus_per_node: int) -> float:
        """Predicted refit wire time (see :func:`predict_link_seconds` for the model).

        Placement: learner ranks 0..W-1, then engine e's rank n at ``W + e*N + n``
        (:func:`engine_global_rank`); nodes hold ``gpus_per_node`` consecutive ranks.
        """
        links = {
            (src, engine_global_rank(self.learner, self.engine, e, n)): b
            for (src, (e, n)), b in self.bytes_per_link().items()
        }
        return predict_link_seconds(links, intra_node_gbps, inter_node_gbps, gpus_per_node)[0]

    def summary(
        self, intra_node_gbps: float = 3600.0, inter_node_gbps: float = 400.0, gpus_per_node: int = 8
    ) -> dict:
        ratio = self.receive_ratio()
        bf16 = self.bf16_ratio()
        return {
            "weight_dtype": self.weight_dtype,
            "senders": len(self.senders()),
            "learner_ranks": self.learner.world_size,
            "receivers": len(self.receivers()),
            "transfers": len(self.transfers),
            "total_bytes": self.total_bytes,
            "bytes_per_sender": _stats(
                self.bytes_per_sender().get(r, 0) for r in range(self.learner.world_size)
            ),
            "bytes_per_receiver": _stats(self.bytes_per_receiver().values()),
            "messages_per_sender": _stats(
                self.messages_per_sender().get(r, 0) for r in range(self.learner.world_size)
            ),
            "messages_per_receiver": _stats(self.messages_per_receiver().values()),
            "links": len(self.bytes_per_link()),
            "bytes_per_link": _stats(self.bytes_per_link().values()),
            "receive_ratio": {"min": min(ratio.values()), "max": max(ratio.values())},
            "bytes_over_bf16_shard": {"min": min(bf16.values()), "max": max(bf16.values())},
            "predicted_seconds": self.predict_seconds(intra_node_gbps, inter_node_gbps, gpus_per_node),
        }


# ------------------------------------------------------------------------------------ planning
def _check(learner: LearnerLayout, engine: EngineLayout) -> None:
    learner.validate()
    engine.validate(learner.model)
    if engine.fp8:
        check_fp8_alignment(learner, engine)


def _box_translate(box: Box, frm: Box, to: Box) -> Box:
    return tuple((a - f0 + t0, b - f0 + t0) for (a, b), (f0, _), (t0, _) in zip(box, frm, to))


def _distinct_pieces(pieces: list[LearnerPiece]) -> list[list[LearnerPiece]]:
    """Group pieces holding the same HF box (duplicate holders of the same data)."""
    groups: dict[Box, list[LearnerPiece]] = {}
    for p in pieces:
        groups.setdefault(p.hf_box, []).append(p)
    boxes = list(groups.values())
    # the distinct boxes must tile the HF tensor without overlap (checked in plan_refit)
    return boxes


def _merge(transfers: list[Transfer]) -> list[Transfer]:
    """Merge transfers between the same (param, sender, receiver) that are adjacent along one
    dimension on both sides and equal on the others."""
    key = lambda t: (t.hf_name, t.src_param, t.src_rank, t.receiver)  # noqa: E731
    by_key: dict[tuple, list[Transfer]] = defaultdict(list)
    for t in transfers:
        by_key[key(t)].append(t)
    out = []
    for items in by_key.values():
        items.sort(key=lambda t: (t.dst_slice, t.src_slice))
        merged = [items[0]]
        for t in items[1:]:
            last = merged[-1]
            joined = _join(last, t)
            if joined is None:
                merged.append(t)
            else:
                merged[-1] = joined
        out += merged
    return out


def _join(a: Transfer, b: Transfer) -> Transfer | None:
    for dim in range(len(a.dst_slice)):
        same = all(
            a.dst_slice[k] == b.dst_slice[k] and a.src_slice[k] == b.src_slice[k]
            for k in range(len(a.dst_slice))
            if k != dim
        )
        if same and a.dst_slice[dim][1] == b.dst_slice[dim][0] and a.src_slice[dim][1] == b.src_slice[dim][0]:
            return Transfer(
                a.hf_name,
                a.src_rank,
                a.src_param,
                _grow(a.src_slice, b.src_slice, dim),
                a.dst_engine,
                a.dst_rank,
                _grow(a.dst_slice, b.dst_slice, dim),
                a.nbytes + b.nbytes,
            )
    return None


def _grow(x: Box, y: Box, dim: int) -> Box:
    return tuple((x[k][0], y[k][1]) if k == dim else x[k] for k in range(len(x)))


def _check_tiling(hf_name: str, boxes: list[Box], shape: tuple[int, ...]) -> None:
    covered = sum(box_numel(b) for b in boxes)
    if covered != box_numel(tuple((0, d) for d in shape)):
        raise PlanError(f"{hf_name}: learner pieces cover {covered} elements of a {shape} tensor")
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if intersect(a, b) is not None:
                raise PlanError(f"{hf_name}: learner pieces {a} and {b} overlap")


def plan_refit(learner: LearnerLayout, engine: EngineLayout) -> RefitPlan:
    """The transfer plan from a Megatron learner to ``engine.num_engines`` TP=N vLLM engines.

    Raises :class:`PlanError` for layouts that cannot be refit (indivisible heads / groups / ffn /
    vocab, PP not dividing the layers, learner and engine model configs that differ; for an
    ``fp8_block`` engine, a shard boundary that cuts a 128x128 block).

    Bytes: ``learner.dtype_bytes`` per element for an ``auto`` engine; for ``fp8_block``
    (:func:`~megatron_tulu.rollout.bridge.layouts.wire_bytes`) the GEMM weights travel as e4m3
    (1 byte per element) plus one fp32 scale per 128x128 block, the rest as bf16.
    """
    _check(learner, engine)
    model, esz, wdt = learner.model, learner.dtype_bytes, engine.weight_dtype
    table = params_by_hf_name(learner)
    hf_shapes: dict[str, tuple[int, ...]] = {}
    shard_bytes: dict[Receiver, int] = defaultdict(int)
    bf16_shard: dict[Receiver, int] = defaultdict(int)
    # (candidates, draft transfer without sender) for every slice to send
    pending: list[tuple[list[tuple[MegatronParam, int]], Transfer]] = []
    for name in hf_tensor_names(model):
        shape = hf_shape(model, name)
        hf_shapes[name] = shape
        groups = _distinct_pieces(learner_pieces(learner, name, table))
        _check_tiling(name, [g[0].hf_box for g in groups], shape)
        for n in range(engine.tp):
            region = vllm_region(model, name, n, engine.tp, engine.vocab_padding)
            for e in range(engine.num_engines):
                shard_bytes[(e, n)] += wire_bytes(name, region, wdt, esz) if box_numel(region) else 0
                bf16_shard[(e, n)] += box_numel(region) * 2
            for holders in groups:
                part = intersect(holders[0].hf_box, region)
                if part is None:
                    continue
                nbytes = wire_bytes(name, part, wdt, esz)
                cands = [
                    (p.param, dp, _box_translate(part, p.hf_box, p.local_box))
                    for p in holders
                    for dp in range(learner.dp)
                ]
                for e in range(engine.num_engines):
                    pending.append((cands, Transfer(name, -1, holders[0].param, (), e, n, part, nbytes)))
    transfers = _assign_senders(learner, pending)
    transfers = _merge(transfers)
    order = {name: i for i, name in enumerate(hf_shapes)}
    transfers.sort(key=lambda t: (order[t.hf_name], t.dst_engine, t.dst_rank, t.dst_slice))
    plan = RefitPlan(learner, engine, transfers, hf_shapes, dict(shard_bytes), dict(bf16_shard))
    bad = {r: x for r, x in plan.receive_ratio().items() if x != 1.0}
    if bad:  # cannot happen if the tiling holds; a guard against planner bugs
        raise PlanError(f"receivers would get other than their shard: {bad}")
    return plan


def _assign_senders(learner: LearnerLayout, pending) -> list[Transfer]:
    """One sender per slice: largest slices first, each to the least-loaded candidate rank.

    Ties go to the candidate with fewer messages, then the lowest rank, which spreads equal
    slices round-robin over DP replicas and duplicate holders.
    """
    load: dict[int, int] = defaultdict(int)
    msgs: dict[int, int] = defaultdict(int)
    out = []
    order = sorted(range(len(pending)), key=lambda i: -pending[i][1].nbytes)
    for i in order:
        cands, draft = pending[i]
        best = None
        for param, dp, local in cands:
            rank = learner_global_rank(param.tp_rank, param.pp_stage, dp, learner.tp, learner.dp)
            score = (load[rank], msgs[rank], rank)
            if best is None or score < best[0]:
                best = (score, rank, param, local)
        _, rank, param, local = best
        load[rank] += draft.nbytes
        msgs[rank] += 1
        out.append(
            Transfer(
                draft.hf_name,
                rank,
                param,
                local,
                draft.dst_engine,
                draft.dst_rank,
                draft.dst_slice,
                draft.nbytes,
            )
        )
    return out


# ------------------------------------------------------------------------------- naive baseline
@dataclass
class NaiveSummary:
    """Full-tensor broadcast (open-instruct / OpenRLHF / TRL): every vLLM rank receives every full
    HF tensor.

    Modelled generously: the learner's TP gather and PP serialisation are free; each tensor is
    sent once per engine by the (TP0, DP0) rank of the stage that holds it and relayed along a
    pipelined ring through the engine's ranks (node by node: the first rank of each node receives
    over the NIC, the others over NVLink), so each vLLM rank receives each byte once.
    """

    learner: LearnerLayout
    engine: EngineLayout
    bytes_per_sender: dict[int, int]
    bytes_per_receiver: dict[Receiver, int]
    messages_per_receiver: dict[Receiver, int]
    links: dict[tuple[int, int], int]  # global ranks (sender or relaying vLLM rank, receiver)
    shard_bytes: dict[Receiver, int]

    def receive_ratio(self) -> dict[Receiver, float]:
        return {r: b / self.shard_bytes[r] for r, b in self.bytes_per_receiver.items()}

    def predict_seconds(self, intra_node_gbps: float, inter_node_gbps: float, gpus_per_node: int) -> float:
        # the relay order is node by node, so intra-node hops use NVLink as in NCCL's ring
        return predict_link_seconds(self.links, intra_node_gbps, inter_node_gbps, gpus_per_node)[0]

    def summary(
        self, intra_node_gbps: float = 3600.0, inter_node_gbps: float = 400.0, gpus_per_node: int = 8
    ) -> dict:
        ratio = self.receive_ratio()
        return {
            "senders": len(self.bytes_per_sender),
            "learner_ranks": self.learner.world_size,
            "receivers": len(self.bytes_per_receiver),
            "bytes_per_sender": _stats(
                self.bytes_per_sender.get(r, 0) for r in range(self.learner.world_size)
            ),
            "bytes_per_receiver": _stats(self.bytes_per_receiver.values()),
            "messages_per_receiver": _stats(self.messages_per_receiver.values()),
            "receive_ratio": {"min": min(ratio.values()), "max": max(ratio.values())},
            "predicted_seconds": self.predict_seconds(intra_node_gbps, inter_node_gbps, gpus_per_node),
        }


def naive_broadcast_summary(learner: LearnerLayout, engine: EngineLayout) -> NaiveSummary:
    _check(learner, engine)
    model, esz = learner.model, learner.dtype_bytes
    table = params_by_hf_name(learner)
    per_sender: dict[int, int] = defaultdict(int)
    links: dict[tuple[int, int], int] = defaultdict(int)
    shard: dict[Receiver, int] = defaultdict(int)
    names = hf_tensor_names(model)
    full = 0
    for name in names:
        shape = hf_shape(model, name)
        nbytes = box_numel(tuple((0, d) for d in shape)) * esz
        full += nbytes
        stage = min(info.pp_stage for info, _ in table[name])
        src = learner_global_rank(0, stage, 0, learner.tp, learner.dp)
        for e in range(engine.num_engines):
            per_sender[src] += nbytes
            prev = src
            for n in range(engine.tp):
                dst = engine_global_rank(learner, engine, e, n)
                links[(prev, dst)] += nbytes
                prev = dst
            for n in range(engine.tp):
                shard[(e, n)] += box_numel(vllm_region(model, name, n, engine.tp, engine.vocab_padding)) * esz
    receivers = [(e, n) for e in range(engine.num_engines) for n in range(engine.tp)]
    return NaiveSummary(
        learner,
        engine,
        dict(per_sender),
        {r: full for r in receivers},
        {r: len(names) for r in receivers},
        dict(links),
        dict(shard),
    )
