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
import threading
import time
from collections import defaultdict

import pytest
import torch

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.models.hf_mapping import shard_from_hf
from megatron_tulu.rollout.bridge.layouts import (
    EngineLayout,
    LearnerLayout,
    PlanError,
    hf_shape,
    hf_tensor_names,
    learner_global_rank,
    megatron_params,
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

pytestmark = pytest.mark.distributed


def small_model(*, heads=4, groups=2, head_dim=16, hidden=64, ffn=96, vocab=301, layers=2, tied=False):
    return ModelConfig(
        name="rand",
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )


def random_hf(model: ModelConfig, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(hf_shape(model, n), generator=g).to(dtype) for n in hf_tensor_names(model)}


def learner_tensors(layout: LearnerLayout, hf) -> dict[int, dict[str, torch.Tensor]]:
    ranks: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for info in megatron_params(layout):
        for tp_rank in range(layout.tp):
            local = shard_from_hf(
                info.kind, [hf[n] for n in info.hf_names], layout.shapes, layout.tp, tp_rank
            )
            for dp_rank in range(layout.dp):
                rank = learner_global_rank(tp_rank, info.pp_stage, dp_rank, layout.tp, layout.dp)
                ranks[rank][info.name] = local.clone()
    return ranks


def run_parties(fns: list, timeout: float = 60.0) -> list:
    """Run one callable per thread; re-raise the first failure."""
    results, errors = [None] * len(fns), [None] * len(fns)

    def wrap(i):
        try:
            results[i] = fns[i]()
        except BaseException as exc:  # re-raised in the caller
            errors[i] = exc

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a party hung"
    for e in errors:
        if e is not None:
            raise e
    return results


def refit_in_threads(
    learner, engine, hf, *, bucket_bytes, checksums=False, dtype=torch.float32, recv_bucket_bytes=None
):
    plan = plan_refit(learner, engine)
    local = learner_tensors(learner, hf)
    world = learner.world_size + engine.world_size
    port = free_port()
    seen: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def learner_party(rank):
        def fn():
            group = init_refit_group("127.0.0.1", port, rank, world, "gloo", timeout_s=30)
            try:
                return send_refit(
                    plan,
                    local[rank],
                    group,
                    rank,
                    bucket_bytes=bucket_bytes,
                    checksums=checksums,
                    timeout_s=30,
                )
            finally:
                destroy_refit_group(group)

        return fn

    def receiver_party(e, n):
        def fn():
            group = init_refit_group(
                "127.0.0.1", port, learner.world_size + e * engine.tp + n, world, "gloo", 30
            )
            got = seen.setdefault((e, n), {})

            def load(stream):
                for name, full in stream:
                    assert tuple(full.shape) == hf[name].shape
                    region = vllm_region(learner.model, name, n, engine.tp)
                    got[name] = full[tuple(slice(a, b) for a, b in region)].clone()

            try:
                return receive_refit(
                    plan,
                    e,
                    n,
                    group,
                    load,
                    dtype=dtype,
                    bucket_bytes=recv_bucket_bytes or bucket_bytes,
                    checksums=checksums,
                    timeout_s=30,
                )
            finally:
                destroy_refit_group(group)

        return fn

    parties = [learner_party(r) for r in range(learner.world_size)]
    parties += [receiver_party(e, n) for e in range(engine.num_engines) for n in range(engine.tp)]
    stats = run_parties(parties)
    return plan, stats[: learner.world_size], stats[learner.world_size :], seen


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
