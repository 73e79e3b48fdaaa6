"""The refit transport over real gloo groups, without vLLM or Megatron.

Learner ranks hold Megatron-layout local tensors built from random HF tensors (``shard_from_hf``);
receivers run the real :func:`receive_refit` with a loader that records what a vLLM rank's weight
loader would read (its ``vllm_region`` of each full-size buffer). Parties are threads of this
process (each with its own stateless gloo group member) except for the dying receiver, which is
a real process that exits mid-refit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from megatron_tulu.rollout.bridge.layouts import (
    EngineLayout,
    LearnerLayout,
    PlanError,
    hf_tensor_names,
    vllm_region,
)
from megatron_tulu.rollout.bridge.planner import plan_refit
from megatron_tulu.rollout.bridge.transport import (
    RefitError,
    bucket_schedule,
    destroy_refit_group,
    init_refit_group,
    receive_refit,
    send_refit,
)
from tests.helpers import REPO, free_port
from tests.unit.bridge.refit_helpers import (
    learner_tensors,
    random_hf,
    refit_in_threads,
    run_parties,
    small_model,
)

pytestmark = pytest.mark.distributed


LAYOUTS = [
    # (learner tp, pp, dp, engine tp, engines, tied)
    (2, 1, 1, 1, 1, False),
    (2, 1, 1, 2, 1, False),
    (1, 2, 1, 2, 1, True),
    (2, 2, 1, 4, 1, False),  # engine TP4 > 2 KV heads: replicated K/V
    (1, 1, 2, 2, 2, True),  # DP replicas share the sends, two engines
]


@pytest.mark.parametrize("tp,pp,dp,etp,ne,tied", LAYOUTS)
def test_every_receiver_gets_exactly_its_shard(tp, pp, dp, etp, ne, tied):
    model = small_model(tied=tied)
    hf = random_hf(model, seed=tp * 10 + etp)
    learner = LearnerLayout(tp=tp, pp=pp, dp=dp, model=model, dtype_bytes=4)
    engine = EngineLayout(tp=etp, num_engines=ne)
    plan, send_stats, recv_stats, seen = refit_in_threads(learner, engine, hf, bucket_bytes=40_000)
    assert recv_stats[0]["buckets"] > 2  # several buckets were exercised
    for st in recv_stats:
        e, n = st["engine"], st["rank"]
        assert st["bytes_received"] == st["shard_bytes"] == plan.shard_bytes[(e, n)]  # ratio 1.00
        for name in hf_tensor_names(model):
            region = vllm_region(model, name, n, etp)
            assert torch.equal(seen[(e, n)][name], hf[name][tuple(slice(a, b) for a, b in region)]), (
                e,
                n,
                name,
            )
    assert sum(s["bytes_sent"] for s in send_stats) == plan.total_bytes
    assert {s["rank"]: s["bytes_sent"] for s in send_stats if s["bytes_sent"]} == plan.bytes_per_sender()


def test_bf16_with_checksums_and_one_bucket():
    model = small_model()
    hf = random_hf(model, seed=3, dtype=torch.bfloat16)
    learner = LearnerLayout(tp=2, pp=1, dp=1, model=model, dtype_bytes=2)
    engine = EngineLayout(tp=2)
    plan, _, recv_stats, seen = refit_in_threads(
        learner, engine, hf, bucket_bytes=1 << 30, checksums=True, dtype=torch.bfloat16
    )
    assert recv_stats[0]["buckets"] == 1
    for name in hf:
        region = vllm_region(model, name, 1, 2)
        assert torch.equal(seen[(0, 1)][name], hf[name][tuple(slice(a, b) for a, b in region)])


def test_parties_with_different_settings_refuse_before_moving_data():
    model = small_model()
    learner = LearnerLayout(tp=2, pp=1, dp=1, model=model, dtype_bytes=4)
    with pytest.raises(RefitError, match="different plans or settings"):
        refit_in_threads(
            learner, EngineLayout(tp=2), random_hf(model), bucket_bytes=40_000, recv_bucket_bytes=50_000
        )


def test_buckets_keep_fused_parts_together_and_respect_the_size():
    model = small_model(layers=4)
    plan = plan_refit(LearnerLayout(tp=2, pp=2, dp=1, model=model, dtype_bytes=4), EngineLayout(tp=2))
    for size in (1, 30_000, 10**9):
        buckets = bucket_schedule(plan, size, 4)
        names = [n for b in buckets for n in b.hf_names]
        assert names == [n for g in plan.reload_groups() for n in g]
        for b in buckets:
            for g in plan.reload_groups():
                assert set(g) <= set(b.hf_names) or not set(g) & set(b.hf_names)
            assert b.full_bytes <= size or len({n.rsplit(".", 2)[0] for n in b.hf_names}) == 1 or size == 1
        assert sum(len(b.transfers) for b in buckets) == len(plan.transfers)


def test_wrong_local_shape_is_refused_before_sending():
    model = small_model()
    learner = LearnerLayout(tp=2, pp=1, dp=1, model=model, dtype_bytes=4)
    plan = plan_refit(learner, EngineLayout(tp=2))
    local = learner_tensors(LearnerLayout(tp=1, pp=1, dp=1, model=model, dtype_bytes=4), random_hf(model))[0]
    with pytest.raises(PlanError, match="local shape"):
        send_refit(plan, local, group=None, rank=0)  # no group needed: it fails before any I/O


def test_engine_with_another_model_is_a_plan_error():
    learner = LearnerLayout(tp=2, pp=1, dp=1, model=small_model(), dtype_bytes=4)
    with pytest.raises(PlanError):
        plan_refit(learner, EngineLayout(tp=2, model=small_model(vocab=302)))


# ------------------------------------------------------------------ one communicator: grouped P2P
class _BatchWork:
    """The one Work a coalesced batch returns (waits for every op of the batch)."""

    def __init__(self, works):
        self.works = works

    def wait(self, timeout=None):
        return all(w.wait(timeout) is not False for w in self.works)


class CoalescingSpy:
    """A real gloo group that coalesces the way ProcessGroupNCCL does: ops issued between
    ``_start_coalescing`` and ``_end_coalescing`` come back as one Work. It stands in for NCCL,
    which this machine cannot run; every transfer still goes over gloo. It records each batch and
    every point-to-point op issued outside one: with NCCL, such an op is what creates a 2-rank
    communicator (``ProcessGroupNCCL::pointToPoint``: only an unbatched op outside eager-init mode
    takes ``getKeySendRecv``)."""

    def __init__(self, group):
        self.group = group
        self.batches: list[list[tuple[str, int, int]]] = []
        self.unbatched: list[tuple[str, int, int]] = []
        self.collectives = 0
        self._open = None

    def _get_backend(self, device):
        return type("Coalescing", (), {"supports_coalescing": True})()

    def _get_backend_name(self):
        return self.group._get_backend_name()

    def _start_coalescing(self, device):
        assert self._open is None, "nested batches"
        self._open = ([], [])

    def _end_coalescing(self, device):
        (ops, works), self._open = self._open, None
        self.batches.append(ops)
        return _BatchWork(works)

    def _p2p(self, kind, tensors, peer, tag):
        work = getattr(self.group, kind)(tensors, peer, tag)
        if self._open is None:
            self.unbatched.append((kind, peer, tag))
            return work
        self._open[0].append((kind, peer, tag))
        self._open[1].append(work)
        return None  # as ProcessGroupNCCL inside a coalesced batch: the batch's Work covers it

    def send(self, tensors, peer, tag):
        return self._p2p("send", tensors, peer, tag)

    def recv(self, tensors, peer, tag):
        return self._p2p("recv", tensors, peer, tag)

    def allreduce(self, *args):
        self.collectives += 1
        return self.group.allreduce(*args)


def test_every_refit_message_is_in_a_coalesced_batch():
    """On a coalescing backend (NCCL) no message of a refit leaves a batch: no pair communicator.
    Each bucket is one batch of data and one of acks per party that has a message in it."""
    model = small_model()
    hf = random_hf(model, seed=5)
    learner = LearnerLayout(tp=2, pp=2, dp=1, model=model, dtype_bytes=4)
    engine = EngineLayout(tp=2, num_engines=2)
    spies = []

    def wrap(group):
        spies.append(CoalescingSpy(group))
        return spies[-1]

    plan, send_stats, recv_stats, seen = refit_in_threads(learner, engine, hf, bucket_bytes=40_000, wrap=wrap)
    for st in recv_stats:  # the data arrived
        e, n = st["engine"], st["rank"]
        assert st["bytes_received"] == plan.shard_bytes[(e, n)]
        for name in hf_tensor_names(model):
            region = vllm_region(model, name, n, 2)
            assert torch.equal(seen[(e, n)][name], hf[name][tuple(slice(a, b) for a, b in region)])
    assert len(spies) == learner.world_size + engine.world_size
    spies.sort(key=lambda spy: spy.group.rank())  # by group rank (the threads joined in any order)
    assert all(spy.unbatched == [] for spy in spies)  # nothing a pair communicator would carry
    assert all(spy.collectives == 1 for spy in spies)  # the start barrier, on the group's communicator
    # every (sender, receiver) link of every bucket: one data message and one ack, both batched
    buckets = bucket_schedule(plan, 40_000, 4)
    links = {
        (t.src_rank, learner.world_size + t.dst_engine * engine.tp + t.dst_rank, b.index)
        for b in buckets
        for t in b.transfers
    }
    sent = {(r, peer, tag // 2) for r, spy in enumerate(spies) for batch in spy.batches for k, peer, tag in batch
            if k == "send" and tag % 2 == 0}  # fmt: skip
    acked = {(peer, r, tag // 2) for r, spy in enumerate(spies) for batch in spy.batches for k, peer, tag in batch
             if k == "send" and tag % 2 == 1}  # fmt: skip
    assert sent == links and acked == links
    for r, spy in enumerate(spies[: learner.world_size]):  # a learner: data batch, then ack batch
        assert len(spy.batches) == 2 * sum(any(t.src_rank == r for t in b.transfers) for b in buckets)
        assert send_stats[r]["p2p_batches"] == len(spy.batches)


# ------------------------------------------------------------------ bounded receive buffers
def test_receive_buffers_stay_within_the_planned_peak():
    """A loader that keeps every tensor until its reload call returns (the worst case of vLLM's
    layerwise reload) gets exactly the planned reload calls and the planned peak, measured on the
    buffers' storages; a loader that lets go as it goes needs fewer calls. Fused parts share a
    call; every rank still gets exactly its shard."""
    from megatron_tulu.rollout.bridge.layouts import fused_group
    from megatron_tulu.rollout.bridge.schedule import receive_schedule

    model = small_model(layers=4)
    hf = random_hf(model, seed=6)
    learner = LearnerLayout(tp=2, pp=1, dp=1, model=model, dtype_bytes=4)
    engine = EngineLayout(tp=2)
    plan = plan_refit(learner, engine)
    bound = 260_000
    sched = receive_schedule(plan, bucket_bytes=40_000, elem_size=4, receive_buffer_bytes=bound)
    assert all(len(c) > 2 for c in sched.calls.values())  # the bound splits the refit
    for hold in (True, False):
        calls: dict = {}
        _, _, recv_stats, seen = refit_in_threads(
            learner, engine, hf, bucket_bytes=40_000, receive_buffer_bytes=bound, hold=hold, calls=calls
        )
        for st in recv_stats:
            r = (st["engine"], st["rank"])
            assert st["bytes_received"] == plan.shard_bytes[r]
            assert st["planned_peak_receive_buffer_bytes"] == sched.peak[r] <= bound
            assert 0 < st["live_buffer_bytes_max"] <= sched.peak[r]
            assert st["reload_calls"] == len(calls[r])
            for names in calls[r]:  # fused parts (q/k/v, gate/up) are reloaded in the same call
                assert all(set(fused_group(n)) <= set(names) for n in names)
            if hold:
                assert st["reload_calls"] == len(sched.calls[r])
                assert st["live_buffer_bytes_max"] == sched.peak[r]
                planned = [[n for k in c for n in sched.buckets[k].hf_names] for c in sched.calls[r]]
                assert calls[r] == planned
            else:
                assert st["reload_calls"] < len(sched.calls[r])
            for name in hf_tensor_names(model):
                region = vllm_region(model, name, r[1], 2)
                assert torch.equal(seen[r][name], hf[name][tuple(slice(a, b) for a, b in region)])


def test_a_bound_below_one_bucket_is_refused_everywhere_at_once():
    """Every party computes the same schedule and refuses before any data moves; none waits for
    a timeout."""
    model = small_model()
    learner = LearnerLayout(tp=2, pp=1, dp=1, model=model, dtype_bytes=4)
    t0 = time.monotonic()
    with pytest.raises(PlanError, match="refit_receive_buffer_mb=.* cannot hold one refit bucket"):
        refit_in_threads(
            learner, EngineLayout(tp=2), random_hf(model), bucket_bytes=40_000, receive_buffer_bytes=50_000
        )
    assert time.monotonic() - t0 < 20  # the parties' timeout is 30 s


def test_a_receiver_alone_refusing_stops_every_party():
    """A bound only the receivers enforce (the learners were given none) still fails every party
    at the start barrier, quickly."""
    model = small_model()
    learner = LearnerLayout(tp=1, pp=1, dp=1, model=model, dtype_bytes=4)
    plan = plan_refit(learner, EngineLayout(tp=1))
    local = learner_tensors(learner, random_hf(model))[0]
    port = free_port()
    errors: dict[str, BaseException] = {}

    def learner_fn():
        group = init_refit_group("127.0.0.1", port, 0, 2, "gloo", timeout_s=30)
        try:
            send_refit(plan, local, group, 0, bucket_bytes=40_000, timeout_s=30)
        except BaseException as exc:
            errors["learner"] = exc
        finally:
            destroy_refit_group(group)

    def receiver_fn():
        group = init_refit_group("127.0.0.1", port, 1, 2, "gloo", timeout_s=30)
        try:
            receive_refit(plan, 0, 0, group, lambda s: list(s), dtype=torch.float32, bucket_bytes=40_000,
                          receive_buffer_bytes=50_000, timeout_s=30)  # fmt: skip
        except BaseException as exc:
            errors["receiver"] = exc
        finally:
            destroy_refit_group(group)

    t0 = time.monotonic()
    run_parties([learner_fn, receiver_fn])
    assert time.monotonic() - t0 < 20
    assert isinstance(errors["receiver"], PlanError)
    assert isinstance(errors["learner"], RefitError) and "refused the refit" in str(errors["learner"])


# ------------------------------------------------------------------ a receiver that dies mid-refit
def _failing_receiver(port: int, mode: str) -> None:
    """Receiver process: loads bucket 0, acknowledges it, then exits ("die") or stalls ("hang")
    once bucket 1 was received, never acknowledging it."""
    model = small_model()
    learner = LearnerLayout(tp=1, pp=1, dp=1, model=model, dtype_bytes=4)
    plan = plan_refit(learner, EngineLayout(tp=1))
    group = init_refit_group("127.0.0.1", port, 1, 2, "gloo", timeout_s=30)
    first = bucket_schedule(plan, 40_000, 4)[0].hf_names

    def load(stream):
        for name, _ in stream:
            if name not in first:
                if mode == "hang":
                    time.sleep(120)
                os._exit(3)

    receive_refit(plan, 0, 0, group, load, dtype=torch.float32, bucket_bytes=40_000)


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_sender_raises_when_a_receiver_fails_mid_refit(mode):
    model = small_model()
    learner = LearnerLayout(tp=1, pp=1, dp=1, model=model, dtype_bytes=4)
    plan = plan_refit(learner, EngineLayout(tp=1))
    local = learner_tensors(learner, random_hf(model))[0]
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--failing-receiver", str(port), mode], env=env, cwd=REPO
    )
    try:
        group = init_refit_group("127.0.0.1", port, 0, 2, "gloo", timeout_s=60)
        timeout = 4.0
        t0 = time.monotonic()
        with pytest.raises(RefitError) as info:
            send_refit(plan, local, group, 0, bucket_bytes=40_000, timeout_s=timeout)
        elapsed = time.monotonic() - t0
        msg = str(info.value)
        print(f"sender raised after {elapsed:.1f} s: {msg}")
        assert "bucket 1/" in msg and "vLLM engine 0 rank 0" in msg, msg
        if mode == "hang":
            # the sender gave up on its own timeout while the receiver is still asleep (120 s)
            assert proc.poll() is None
        if mode == "die":
            assert proc.wait(timeout=30) == 3
        else:
            assert "timed out" in msg.lower() or "timeout" in msg.lower(), msg
        destroy_refit_group(group)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    if sys.argv[1] == "--failing-receiver":
        _failing_receiver(int(sys.argv[2]), sys.argv[3])
