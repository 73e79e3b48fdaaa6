"""Refit transport: execute a :class:`~megatron_tulu.rollout.bridge.planner.RefitPlan` over a
dedicated process group joining the learner ranks and the vLLM worker ranks.

Group ranks (the planner's placement, :func:`~.planner.engine_global_rank`): learner global rank
``r`` is group rank ``r``; rank ``n`` of engine ``e`` is ``L + e*N + n`` (``L`` learner ranks,
``N`` = engine TP). The group is created with vLLM's
``stateless_init_torch_distributed_process_group`` (gloo on CPU, NCCL on GPU), so it never
touches the learner's ``torch.distributed`` world or vLLM's own groups. Group rank 0 (learner
rank 0) hosts the rendezvous store.

**One communicator per refit group.** Every message goes through :func:`p2p_batch`, one code
path on CPU and GPU, which issues a list of sends / receives the way torch's own
``batch_isend_irecv`` does (``torch/distributed/distributed_c10d.py`` of the installed torch
2.13: ``batch_isend_irecv`` wraps the ops in ``_coalescing_manager(group, device,
async_ops=True)`` when ``group._get_backend(device).supports_coalescing``, which calls
``group._start_coalescing(device)`` before and ``group._end_coalescing(device)`` after them and
returns that one ``Work``; otherwise it posts the ops one by one). We cannot call
``batch_isend_irecv`` itself: its ``P2POp`` translates ``group_peer`` through ``get_global_rank``,
which refuses a group torch did not register ("Group ... is not registered"), and vLLM's stateless
group is not registered; ``isend(..., group_dst=)`` / ``irecv(..., group_src=)`` take the group
rank as is. What that does in ``ProcessGroupNCCL::pointToPoint``
(``torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp``, pytorch main; the C++ is not in the wheel):

- ``batchP2P = ncclActiveGroupCounter_ > 0`` (``startCoalescing`` opened an NCCL group): then
  ``key = getKeyFromDevice(device)``, i.e. the group's own communicator, the one collectives use;
- only an unbatched send/recv on a lazily initialised group takes ``key = getKeySendRecv(rank_,
  peer)`` and creates "special 2-rank communicators for each pair of send/recv ranks" - the 892
  blocking initialisations of a first 405B refit (one per (learner, engine rank) link);
- ``eagerConnectSingleDevice`` (Python: ``Backend.eager_connect_single_device``, what
  ``init_process_group(device_id=...)`` calls) creates the device communicator up front and sets
  ``eagerInit_``, after which even unbatched ops "reuse the parent comm. Do not lazily create p2p
  communicators" (pytorch PRs #154132 / #156748; #129140 / #152220 for the history).

:func:`init_refit_group` connects an NCCL group eagerly while every member is still in the join
(all members take part in creating the communicator, as NCCL requires), and every transfer is
batched: two independent reasons for exactly one communicator per member. gloo has no pair
communicators (its full mesh is set up when the group is created) and no coalescing, so
:func:`p2p_batch` posts the same ops one by one there, as ``batch_isend_irecv`` does; the unit
tests run the coalescing branch over real gloo transfers to check that no message of a refit
leaves a batch. vLLM's ``PyNcclCommunicator`` (``vllm/distributed/device_communicators/
pynccl.py``: one ``ncclCommInitRank`` in ``__init__``, ``send``/``recv`` call ``ncclSend`` /
``ncclRecv`` on ``self.comm``) would also be a single communicator, but it needs a second (gloo)
group for its unique id and returns no ``Work`` to wait on with a timeout, which the failure
detection below relies on; it would also leave CPU and GPU on different code.

Protocol (both sides derive everything from the plan, no metadata messages):

1. **Buckets.** :func:`~.schedule.bucket_schedule` cuts ``plan.reload_groups()`` (in checkpoint
   order) into consecutive runs whose full-size receive buffers add up to at most
   ``bucket_bytes`` (at least one reload group per bucket, so the fused parts of a module, q/k/v
   and gate/up, always share a bucket and a ``reload_weights`` pass).
2. **Start.** Every member enters with a small all-reduce that also checks that all computed the
   same plan and settings, and lets a receiver refuse (a receive-buffer bound too small for a
   bucket) so that every member raises at once instead of waiting for a timeout (fails with a
   clear error if a party is missing when ``timeout_s`` runs out).
3. **Per bucket** ``b``: every learner rank packs, per receiver, the plan's slices of its local
   Megatron tensors for that receiver in plan order into one flat buffer and posts one batch of
   sends (one per receiver; all learner ranks and PP stages at once); every receiver posts one
   batch of receives (one per sender), unpacks each slice into transient full-size HF buffers
   (allocated uninitialised: a vLLM rank's loader only reads its own region, so on CPU only those
   pages become resident) and hands the bucket's tensors to its ``load_fn``. Peak extra memory
   on a sender: the bytes it sends for the bucket (non-contiguous slices are packed).
4. **Reload calls, bounded receive buffers.** A receiver feeds consecutive buckets to one
   ``load_fn`` call (vLLM: one ``reload_weights``) while the bytes of its refit buffers still
   alive (measured on their storages: vLLM may hold a tensor until its layer is complete) plus the
   next bucket's full-size buffers and messages stay within its planned peak
   (:func:`~.schedule.receive_schedule`, at most ``receive_buffer_bytes``); otherwise it ends the
   call (vLLM processes and drops everything it holds) and starts the next one with that bucket.
5. **Acks.** After a bucket's tensors were consumed, each receiver sends every sender of the
   bucket a small float64 tensor ``[1, (sum, sum of squares) per transfer if checksums]``. The
   sender waits for it with ``timeout_s``: a receiver that died (or hangs) mid-refit makes the
   sender raise :class:`RefitError` naming the peer and the bucket instead of hanging. The last
   bucket of a reload call is acknowledged after ``load_fn`` returned (vLLM finished
   post-processing).

After a :class:`RefitError` the group is in an undefined state (gloo/NCCL ops may have timed out
half-way) and the engine's weights are partially updated: destroy the group, restart or re-join
and refit again.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.dtypes import TORCH_NAMES, torch_dtype
from megatron_tulu.kernels.fp8 import FP8_DTYPE, blockwise_fp8_quantize, scale_shape
from megatron_tulu.models.hf_mapping import fp8_quantized, fp8_scale_name
from megatron_tulu.rollout.bridge.layouts import (
    Box,
    EngineLayout,
    LearnerLayout,
    PlanError,
    box_numel,
    fp8_scale_box,
    learner_coords,
    megatron_local_shape,
    megatron_params,
)
from megatron_tulu.rollout.bridge.planner import RefitPlan, Transfer, engine_global_rank, plan_refit
from megatron_tulu.rollout.bridge.schedule import (
    Bucket,
    ReceiveSchedule,
    bucket_schedule,
    receive_schedule,
)

__all__ = [
    "Bucket",
    "P2POp",
    "RefitError",
    "RefitSpec",
    "bucket_schedule",
    "destroy_refit_group",
    "fp8_wire_bytes",
    "init_refit_group",
    "local_tensors",
    "p2p_batch",
    "plan_fingerprint",
    "receive_refit",
    "send_refit",
]

DEFAULT_BUCKET_BYTES = 256 * 2**20
DEFAULT_TIMEOUT_S = 120.0


LoadFn = Callable[[Iterator[tuple[str, torch.Tensor]]], None]


class RefitError(RuntimeError):
    """A refit that could not complete (a peer died or timed out, a checksum mismatch)."""


# ----------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class RefitSpec:
    """Everything a party needs to rebuild the same plan: plain data, JSON-able via ``to_dict``.

    ``dtype`` is the wire dtype (the learner's parameter dtype, e.g. ``"bfloat16"``); vLLM's
    loaders cast to the engine's dtype. With ``engine.weight_dtype == "fp8_block"`` it is the
    learner's parameter dtype only (the source of the quantization): the GEMM weights travel as
    e4m3 + fp32 block scales and every other tensor as bf16.
    """

    learner: LearnerLayout
    engine: EngineLayout
    dtype: str = "float32"
    # ``rollout.refit_receive_buffer_mb`` in bytes: what one engine rank may hold in refit buffers
    # at once (full-size receive buffers + received messages); None: unbounded (one reload call)
    receive_buffer_bytes: int | None = None

    def plan(self) -> RefitPlan:
        return _cached_plan(self)

    def schedule(self, bucket_bytes: int) -> ReceiveSchedule:
        """Buckets and reload calls (:class:`PlanError` if a bucket exceeds the receive bound)."""
        esz = self.torch_dtype.itemsize
        return receive_schedule(
            self.plan(),
            bucket_bytes=bucket_bytes,
            elem_size=esz,
            receive_buffer_bytes=self.receive_buffer_bytes,
        )

    def to_dict(self) -> dict:
        learner = dataclasses.asdict(self.learner)
        learner["model"] = dataclasses.asdict(self.learner.model)
        engine = {k: v for k, v in dataclasses.asdict(self.engine).items() if k != "model"}
        engine["model"] = dataclasses.asdict(self.engine.model) if self.engine.model is not None else None
        return {
            "learner": learner,
            "engine": engine,
            "dtype": self.dtype,
            "receive_buffer_bytes": self.receive_buffer_bytes,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> RefitSpec:
        learner = dict(d["learner"])
        learner["model"] = ModelConfig(**learner["model"])
        engine = dict(d["engine"])
        engine["model"] = ModelConfig(**engine["model"]) if engine.get("model") else None
        return cls(
            LearnerLayout(**learner), EngineLayout(**engine), d["dtype"], d.get("receive_buffer_bytes")
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in TORCH_NAMES:
            raise PlanError(f"refit wire dtype must be one of {sorted(TORCH_NAMES)}, got {self.dtype!r}")
        return torch_dtype(self.dtype)


_PLAN_CACHE: dict[str, RefitPlan] = {}


def _cached_plan(spec: RefitSpec) -> RefitPlan:
    d = spec.to_dict()
    key = repr((d["learner"], d["engine"], d["dtype"]))  # the receive bound does not change the plan
    if key not in _PLAN_CACHE:
        _PLAN_CACHE.clear()  # one layout pair per process in practice; keep memory flat
        _PLAN_CACHE[key] = plan_refit(spec.learner, spec.engine)
    return _PLAN_CACHE[key]


def plan_fingerprint(plan: RefitPlan) -> str:
    """A short hash of the plan's transfers: both sides compare it before moving any bytes."""
    h = hashlib.sha256()
    h.update(plan.engine.weight_dtype.encode())
    for t in plan.transfers:
        h.update(
            repr((t.hf_name, t.src_rank, t.src_param.name, t.src_slice, t.receiver, t.dst_slice)).encode()
        )
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------- helpers
def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _box_shape(box: Box) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)


# ----------------------------------------------------------------------------------- group
def init_refit_group(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
):
    """Join the refit group (blocks until all ``world_size`` members joined or ``timeout_s``).

    ``backend`` defaults to NCCL when CUDA is available, else gloo. ``timeout_s`` also becomes
    the group's operation timeout (gloo honours it per op). An NCCL group gets its one
    communicator here, eagerly (see the module docstring): every member calls this at the same
    time, which creating an NCCL communicator requires.
    """
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    # Under torchrun, TORCHELASTIC_USE_AGENT_STORE=True makes torch's tcp:// rendezvous connect
    # every rank (rank 0 included) as a client to the elastic agent's store instead of letting
    # rank 0 host it: nobody would host the refit group's store. Hide it for this rendezvous.
    saved = os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    try:
        group = stateless_init_torch_distributed_process_group(
            host, int(port), int(rank), int(world_size), backend=backend, timeout=timedelta(seconds=timeout_s)
        )
    finally:
        if saved is not None:
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = saved
    if group._get_backend_name() == "nccl":
        device = _group_device(group)
        group._get_backend(device).eager_connect_single_device(device)
    return group


def destroy_refit_group(group) -> None:
    from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

    try:
        stateless_destroy_torch_distributed_process_group(group)
    except Exception:  # best effort on shutdown (a peer may be gone)
        pass


def _group_device(group) -> torch.device:
    if group._get_backend_name() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class P2POp:
    """One send (``recv=False``) or receive of ``tensor`` to / from group rank ``peer``."""

    tensor: torch.Tensor
    peer: int
    tag: int
    recv: bool = False


def p2p_batch(group, ops: list[P2POp]) -> list[tuple[list[int], object]]:
    """Issue ``ops`` as one batch; returns ``(peers, work)`` pairs to wait on.

    The only place the refit sends or receives (module docstring: why this yields one NCCL
    communicator). On a backend that coalesces (NCCL) the ops go into one NCCL group and come back
    as one ``Work`` for all their peers; elsewhere (gloo) they are posted one by one, one ``Work``
    each, as ``torch.distributed.batch_isend_irecv`` does.
    """
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _coalescing_manager

    if not ops:
        return []
    device = ops[0].tensor.device

    def post(op: P2POp):
        if op.recv:
            return dist.irecv(op.tensor, group=group, tag=op.tag, group_src=op.peer)
        return dist.isend(op.tensor, group=group, tag=op.tag, group_dst=op.peer)

    if group._get_backend(device).supports_coalescing:
        with _coalescing_manager(group, device, async_ops=True) as cm:
            for op in ops:
                post(op)
        return [([op.peer for op in ops], work) for work in cm.works]
    return [([op.peer], post(op)) for op in ops]


def _wait(work, timeout_s: float, what: Callable[[], str]) -> None:
    try:
        ok = work.wait(timedelta(seconds=timeout_s))
    except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses
        raise RefitError(f"{what()}: {type(exc).__name__}: {exc}") from exc
    if ok is False:
        raise RefitError(f"{what()}: timed out after {timeout_s:g} s")


def _wait_all(
    works: list[tuple[list[int], object]], timeout_s: float, what: Callable[[list[int]], str]
) -> None:
    """Wait on each ``(peers, work)`` of a :func:`p2p_batch`; ``what(peers)`` says what failed."""
    for peers, work in works:
        _wait(work, timeout_s, lambda p=peers: what(p))


def _agreement_key(
    plan: RefitPlan, bucket_bytes: int, checksums: bool, dtype: torch.dtype, receive_bytes: int | None
) -> int:
    text = f"{plan_fingerprint(plan)}|{bucket_bytes}|{int(checksums)}|{dtype}|{receive_bytes}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def _start_barrier(
    group, device: torch.device, timeout_s: float, who: str, key: int, refusal: PlanError | None = None
) -> None:
    """All members enter the refit and agree on plan, bucket size, checksums, dtype and receive
    bound: an all-reduce (MAX) of ``[key, -key, refused]`` gives ``[k, -k, 0]`` only if every
    member has the same key and none refused. A member that refuses (``refusal``) still enters,
    so that every member fails now rather than at its timeout."""
    t = torch.tensor([key, -key, int(refusal is not None)], dtype=torch.int64, device=device)
    work = group.allreduce([t], torch.distributed.ReduceOp.MAX)
    _wait(
        work,
        timeout_s,
        lambda: f"refit start ({who}): not every member of the refit group entered the refit",
    )
    hi, neg_lo, refused = (int(x) for x in t.cpu())
    if refusal is not None:
        raise refusal
    if refused:
        raise RefitError(
            f"refit start ({who}): an engine rank refused the refit (its receive-buffer bound cannot "
            "hold a refit bucket; its own error says by how much)"
        )
    if hi != -neg_lo:
        raise RefitError(
            f"refit start ({who}): the members of the refit group computed different plans "
            "or settings (learner / engine layouts, model config, dtype, bucket_bytes, checksums or "
            "the receive-buffer bound differ)"
        )


def _receiver_label(plan: RefitPlan, receiver: tuple[int, int]) -> str:
    e, n = receiver
    return (
        f"vLLM engine {e} rank {n} (refit-group rank {engine_global_rank(plan.learner, plan.engine, e, n)})"
    )


def _receivers_label(plan: RefitPlan, group_ranks: list[int]) -> str:
    lw, tp = plan.learner.world_size, plan.engine.tp
    return ", ".join(_receiver_label(plan, divmod(r - lw, tp)) for r in group_ranks)


# ----------------------------------------------------------------------------------- learner side
def local_tensors(model_chunks: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Chunk-local name -> parameter tensor of this learner rank (one chunk: no virtual PP)."""
    from megatron_tulu.models.hf_io import iter_global_params

    if len(model_chunks) != 1:
        raise PlanError(f"refit supports one model chunk per rank (no virtual PP), got {len(model_chunks)}")
    return {name: param.data for name, _, param in iter_global_params(model_chunks)}


def _check_local(plan: RefitPlan, rank: int, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Refuse (before sending anything) local tensors that do not match the plan's layout."""
    layout = plan.learner
    tp_rank, pp_rank, _ = learner_coords(rank, layout.tp, layout.dp)
    for info in megatron_params(layout):
        if info.pp_stage != pp_rank:
            continue
        expect = megatron_local_shape(layout, info)
        if info.name not in tensors:
            # PP=1 with tied embeddings: output_layer reuses the embedding (not in the plan)
            raise PlanError(
                f"learner rank {rank}: no local tensor {info.name!r} (plan expects {list(expect)})"
            )
        got = tensors[info.name]
        if tuple(got.shape) != tuple(expect):
            raise PlanError(
                f"learner rank {rank} (tp {tp_rank}, pp {pp_rank}): {info.name} has local shape "
                f"{list(got.shape)}, the plan expects {list(expect)}"
            )
        if plan.engine.fp8:
            if not got.is_floating_point():
                raise PlanError(f"learner rank {rank}: {info.name} is {got.dtype}, not floating point")
        elif got.dtype != dtype:
            raise PlanError(
                f"learner rank {rank}: {info.name} is {got.dtype}, the refit wire dtype is {dtype}"
            )


def fp8_wire_bytes(hf_name: str, part: torch.Tensor) -> torch.Tensor:
    """One slice of an fp8_block refit as the bytes that travel (uint8, 1-D).

    GEMM weights (:func:`~megatron_tulu.models.hf_mapping.fp8_quantized`): the slice is a
    whole number of 128x128 blocks of the HF tensor (the planner refuses layouts where it is not),
    so quantizing it here gives the same e4m3 bytes and scales as quantizing the full tensor
    offline: ``e4m3 [rows, cols]`` then ``fp32 scale_inv [ceil(rows/128), ceil(cols/128)]``.
    Anything else: the slice cast to bf16.
    """
    if fp8_quantized(hf_name):
        q, s = blockwise_fp8_quantize(part)
        return torch.cat(
            [q.contiguous().view(torch.uint8).reshape(-1), s.contiguous().view(torch.uint8).reshape(-1)]
        )
    return part.to(torch.bfloat16).contiguous().view(torch.uint8).reshape(-1)


def _checksum(x: torch.Tensor) -> tuple[float, float]:
    x = x.detach().to(torch.float64)
    return float(x.sum()), float((x * x).sum())


def _schedule(
    plan: RefitPlan, bucket_bytes: int, esz: int, receive_bytes: int | None
) -> tuple[ReceiveSchedule | None, PlanError | None]:
    try:
        return receive_schedule(
            plan, bucket_bytes=bucket_bytes, elem_size=esz, receive_buffer_bytes=receive_bytes
        ), None
    except PlanError as exc:
        return None, exc


def send_refit(
    plan: RefitPlan,
    model_chunks: list[torch.nn.Module] | Mapping[str, torch.Tensor],
    group,
    rank: int,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    receive_buffer_bytes: int | None = None,
    dtype: torch.dtype | None = None,
    checksums: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict:
    """Learner side: send exactly this rank's planned slices, bucket by bucket; return stats.

    Every learner rank of the group calls this (ranks with nothing planned only join the start
    barrier). ``model_chunks`` may also be a mapping chunk-local name -> local tensor.
    ``receive_buffer_bytes`` must equal the receivers' (it only bounds their memory, but a
    bound too small for a bucket is refused on every side before any data moves).
    Raises :class:`PlanError` before sending if the local tensors do not match the plan or the
    receive bound cannot hold a bucket, and :class:`RefitError` if a receiver fails, dies or
    times out.
    """
    tensors = model_chunks if isinstance(model_chunks, Mapping) else local_tensors(model_chunks)
    first = next(iter(tensors.values()))
    dtype = dtype or first.dtype
    _check_local(plan, rank, tensors, dtype)
    sched, refusal = _schedule(plan, bucket_bytes, dtype.itemsize, receive_buffer_bytes)
    gdev = _group_device(group)
    t0 = time.perf_counter()
    key = _agreement_key(plan, bucket_bytes, checksums, dtype, receive_buffer_bytes)
    _start_barrier(group, gdev, timeout_s, f"learner rank {rank}", key, refusal)
    assert sched is not None
    buckets = sched.buckets
    stats = {"rank": rank, "bytes_sent": 0, "messages": 0, "buckets": len(buckets), "peak_pack_bytes": 0}
    stats["p2p_batches"] = 0
    stats["barrier_seconds"] = time.perf_counter() - t0  # waiting for the other members
    t0 = time.perf_counter()
    with torch.no_grad():
        for bucket in buckets:
            per_recv: dict[tuple[int, int], list[Transfer]] = defaultdict(list)
            for t in bucket.transfers:
                if t.src_rank == rank:
                    per_recv[t.receiver].append(t)
            if not per_recv:
                continue
            sends, acks, pack_bytes = [], [], 0
            for receiver in sorted(per_recv):
                items = per_recv[receiver]
                parts = [tensors[t.src_param.name][_slices(t.src_slice)] for t in items]
                if plan.engine.fp8:  # quantize each slice as it leaves: e4m3 + scales | bf16 bytes
                    parts = [fp8_wire_bytes(t.hf_name, p) for t, p in zip(items, parts)]
                flat = torch.cat([p.reshape(-1) for p in parts]).to(gdev)
                pack_bytes += flat.numel() * flat.element_size()
                dst = engine_global_rank(plan.learner, plan.engine, *receiver)
                sends.append(P2POp(flat, dst, 2 * bucket.index))
                ack = torch.zeros(1 + (2 * len(items) if checksums else 0), dtype=torch.float64, device=gdev)
                acks.append((receiver, items, parts, ack))
                stats["bytes_sent"] += flat.numel() * flat.element_size()
                stats["messages"] += 1
            stats["peak_pack_bytes"] = max(stats["peak_pack_bytes"], pack_bytes)
            # the data of this bucket, then (a batch of its own) the acknowledgements
            where = f"refit bucket {bucket.index}/{len(buckets)}: learner rank {rank}"
            _wait_all(
                p2p_batch(group, sends),
                timeout_s,
                lambda p, where=where: f"{where} could not send to {_receivers_label(plan, p)}",
            )
            ack_ops = [
                P2POp(ack, dst.peer, 2 * bucket.index + 1, recv=True) for dst, (*_, ack) in zip(sends, acks)
            ]
            _wait_all(
                p2p_batch(group, ack_ops),
                timeout_s,
                lambda p, where=where: (
                    f"{where} got no acknowledgement from {_receivers_label(plan, p)} (receiver died or hangs)"
                ),
            )
            stats["p2p_batches"] += 2
            for receiver, items, parts, ack in acks:
                ack = ack.cpu()
                if float(ack[0]) != 1.0:
                    raise RefitError(
                        f"refit bucket {bucket.index}: {_receiver_label(plan, receiver)} reported failure"
                    )
                if checksums:
                    _compare_checksums(plan, bucket.index, receiver, items, parts, ack)
            del sends, acks, ack_ops
    stats["seconds"] = time.perf_counter() - t0
    return stats


def _compare_checksums(plan, bucket, receiver, items, parts, ack) -> None:
    for i, (t, part) in enumerate(zip(items, parts)):
        want = _checksum(part)
        got = (float(ack[1 + 2 * i]), float(ack[2 + 2 * i]))
        for w, g, label in ((want[0], got[0], "sum"), (want[1], got[1], "sum of squares")):
            if abs(w - g) > 1e-9 * max(1.0, abs(w)):
                raise RefitError(
                    f"refit bucket {bucket}: checksum mismatch ({label}) for {t.hf_name}{list(t.dst_slice)} "
                    f"on {_receiver_label(plan, receiver)}: sent {w!r}, received {g!r}"
                )


# ----------------------------------------------------------------------------------- receiver side
class _LiveBuffers:
    """Bytes of the refit buffers a receiver allocated that are still alive anywhere (weak
    references to their storages: a view vLLM keeps holds the whole buffer)."""

    def __init__(self) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self._items: list[tuple[object, int]] = []
        self.max = 0

    def add(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            storage = t.untyped_storage()
            self._items.append((self._ref(storage), storage.nbytes()))

    def bytes(self) -> int:
        self._items = [(r, n) for r, n in self._items if not r.expired()]
        return sum(n for _, n in self._items)

    def observe(self) -> int:
        now = self.bytes()
        self.max = max(self.max, now)
        return now


def receive_refit(
    plan: RefitPlan,
    engine: int,
    tp_rank: int,
    group,
    load_fn: LoadFn,
    *,
    dtype: torch.dtype,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    receive_buffer_bytes: int | None = None,
    checksums: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: torch.device | None = None,
) -> dict:
    """vLLM side: receive this rank's planned slices bucket by bucket and feed ``load_fn``.

    ``load_fn`` is called once per reload call with a lazy iterator of ``(hf_name,
    full_size_tensor)`` (vLLM: ``model_runner.reload_weights(weights_iterator=...)``); each bucket
    is received only when the loader asks for its first tensor. A call takes buckets while the
    refit buffers still alive plus the next bucket stay within this rank's planned peak
    (:func:`~.schedule.receive_schedule`: at most ``receive_buffer_bytes``; ``None``: one call).
    Returns stats (``bytes_received``, ``shard_bytes``, ``reload_calls``,
    ``live_buffer_bytes_max`` - the most the refit buffers held at once, measured -,
    ``seconds``...).
    """
    receiver = (engine, tp_rank)
    me = engine_global_rank(plan.learner, plan.engine, engine, tp_rank)
    fp8 = plan.engine.fp8
    sched, refusal = _schedule(plan, bucket_bytes, dtype.itemsize, receive_buffer_bytes)
    gdev = _group_device(group)
    device = device or gdev
    t0 = time.perf_counter()
    key = _agreement_key(plan, bucket_bytes, checksums, dtype, receive_buffer_bytes)
    _start_barrier(group, gdev, timeout_s, _receiver_label(plan, receiver), key, refusal)
    assert sched is not None
    buckets = sched.buckets
    limit = sched.peak[receiver]
    live = _LiveBuffers()
    stats = {
        "engine": engine,
        "rank": tp_rank,
        "bytes_received": 0,
        "messages": 0,
        "buckets": len(buckets),
        "shard_bytes": plan.shard_bytes[receiver],
        "bf16_shard_bytes": plan.bf16_shard_bytes[receiver],
        "weight_dtype": plan.engine.weight_dtype,
        "peak_bucket_bytes": 0,
        "reload_calls": 0,
        "planned_peak_receive_buffer_bytes": limit,
        "receive_buffer_bytes": receive_buffer_bytes,
        "live_buffer_bytes_max": 0,
        "p2p_batches": 0,
        "barrier_seconds": time.perf_counter() - t0,  # waiting for the other members
    }
    mine = [[t for t in b.transfers if t.receiver == receiver] for b in buckets]
    pending_acks: list[tuple[int, list]] = []  # per bucket: [(src, ack tensor)]
    state = {"next": 0}  # the next bucket to receive

    def flush_acks() -> None:
        while pending_acks:
            index, acks = pending_acks.pop(0)
            works = p2p_batch(group, [P2POp(ack, src, 2 * index + 1) for src, ack in acks])
            stats["p2p_batches"] += 1
            _wait_all(
                works, timeout_s, lambda p, i=index: f"refit bucket {i}: ack to learner rank(s) {p} failed"
            )

    def receive(bucket) -> dict[str, torch.Tensor]:
        """Post the bucket's receives, build its full-size buffers, place every slice."""
        per_src: dict[int, list[Transfer]] = defaultdict(list)
        for t in mine[bucket.index]:
            per_src[t.src_rank].append(t)
        flats = {src: _message_buffer(per_src[src], fp8, dtype, gdev) for src in sorted(per_src)}
        works = p2p_batch(
            group, [P2POp(flat, src, 2 * bucket.index, recv=True) for src, flat in flats.items()]
        )
        stats["p2p_batches"] += 1 if works else 0
        buffers = _receive_buffers(plan, bucket.hf_names, dtype, device)
        live.add(*flats.values(), *buffers.values())
        live.observe()
        _wait_all(
            works,
            timeout_s,
            lambda p, b=bucket.index: (
                f"refit bucket {b}/{len(buckets)}: {_receiver_label(plan, receiver)} "
                f"received nothing from learner rank(s) {p}"
            ),
        )
        del works
        acks = []
        for src, flat in flats.items():
            stats["bytes_received"] += flat.numel() * flat.element_size()
            stats["messages"] += 1
            sums = _place_message(per_src[src], flat, buffers, device, fp8=fp8, checksums=checksums)
            acks.append((src, torch.tensor([1.0, *sums], dtype=torch.float64, device=gdev)))
        pending_acks.append((bucket.index, acks))
        stats["peak_bucket_bytes"] = max(stats["peak_bucket_bytes"], bucket.full_bytes)
        return buffers

    def reload_call() -> Iterator[tuple[str, torch.Tensor]]:
        """The buckets of one reload call: stop before a bucket that would exceed ``limit``."""
        first = True
        while state["next"] < len(buckets):
            bucket = buckets[state["next"]]
            need = bucket.full_bytes + sum(t.nbytes for t in mine[bucket.index])
            if not first:
                flush_acks()  # the previous bucket was consumed: the loader asked for more
                if live.bytes() + need > limit:
                    return  # vLLM drops what it holds when this call returns; the next starts here
            first = False
            buffers = receive(bucket)
            state["next"] += 1
            for name in bucket.hf_names:
                yield name, buffers.pop(name)
                if fp8 and fp8_quantized(name):
                    yield fp8_scale_name(name), buffers.pop(fp8_scale_name(name))

    t0 = time.perf_counter()
    while state["next"] < len(buckets):
        if live.bytes():  # what the last call's loader left behind (reference cycles)
            gc.collect()
        stats["reload_calls"] += 1
        stream = reload_call()
        load_fn(stream)
        if next(stream, None) is not None:
            raise RefitError(
                f"{_receiver_label(plan, receiver)}: the loader stopped before the end of reload call "
                f"{stats['reload_calls']} (bucket {state['next']}/{len(buckets)})"
            )
        flush_acks()  # the call's last bucket: acknowledged after the loader finished post-processing
    stats["live_buffer_bytes_max"] = live.max
    stats["seconds"] = time.perf_counter() - t0
    stats["group_rank"] = me
    return stats


def _message_buffer(items: list[Transfer], fp8: bool, dtype: torch.dtype, device) -> torch.Tensor:
    """The receive buffer of one learner rank's message: its slices back to back (fp8_block: the
    wire bytes of e4m3 values + scales, else elements of ``dtype``)."""
    if fp8:
        return torch.empty(sum(t.nbytes for t in items), dtype=torch.uint8, device=device)
    return torch.empty(sum(box_numel(t.dst_slice) for t in items), dtype=dtype, device=device)


def _place_message(
    items: list[Transfer],
    flat: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    device,
    *,
    fp8: bool,
    checksums: bool,
) -> list[float]:
    """Copy one received message into the bucket's full-size tensors; the checksums to return
    (sum and sum of squares per slice, of what the sender packed) when asked."""
    sums: list[float] = []
    off = 0
    for t in items:
        if fp8:
            piece = flat[off : off + t.nbytes]
            _unpack_fp8(t, piece, buffers, device)
            off += t.nbytes
        else:
            k = box_numel(t.dst_slice)
            piece = buffers[t.hf_name][_slices(t.dst_slice)]
            piece.copy_(flat[off : off + k].view(_box_shape(t.dst_slice)).to(device))
            off += k
        if checksums:
            sums += list(_checksum(piece))
    return sums


def _receive_buffers(
    plan: RefitPlan, names: list[str], dtype: torch.dtype, device
) -> dict[str, torch.Tensor]:
    """Transient full-size HF tensors of one bucket (uninitialised: a vLLM rank's loader only reads
    its own region). fp8_block: e4m3 weights with their fp32 ``weight_scale_inv``, bf16 otherwise."""
    out = {}
    for name in names:
        shape = plan.hf_shapes[name]
        if not plan.engine.fp8:
            out[name] = torch.empty(shape, dtype=dtype, device=device)
        elif fp8_quantized(name):
            out[name] = torch.empty(shape, dtype=FP8_DTYPE, device=device)
            out[fp8_scale_name(name)] = torch.empty(scale_shape(shape), dtype=torch.float32, device=device)
        else:
            out[name] = torch.empty(shape, dtype=torch.bfloat16, device=device)
    return out


def _unpack_fp8(t: Transfer, raw: torch.Tensor, buffers: dict[str, torch.Tensor], device) -> None:
    """Place one received fp8_block slice (:func:`fp8_wire_bytes` layout) into the bucket buffers."""
    shape = _box_shape(t.dst_slice)
    if not fp8_quantized(t.hf_name):
        # clone: a fresh, aligned storage (a uint8 slice at an odd offset cannot be viewed as bf16)
        buffers[t.hf_name][_slices(t.dst_slice)].copy_(
            raw.clone().view(torch.bfloat16).view(shape).to(device)
        )
        return
    k = box_numel(t.dst_slice)
    sbox = fp8_scale_box(t.dst_slice)
    buffers[t.hf_name][_slices(t.dst_slice)].copy_(raw[:k].view(FP8_DTYPE).view(shape).to(device))
    scales = raw[k:].clone().view(torch.float32).view(_box_shape(sbox))
    buffers[fp8_scale_name(t.hf_name)][_slices(sbox)].copy_(scales.to(device))
