"""Refit schedule arithmetic (pure): buckets, reload calls under a receive-buffer bound, the
communicator count, the engine memory estimate with the refit buffers, and the 405B numbers
``plan-refit`` reports."""

from __future__ import annotations

import json
from functools import partial

import pytest

from megatron_tulu.algorithms.memory import GB, estimate_engine_memory, format_memory_table
from megatron_tulu.config.schema import ModelConfig, RolloutConfig
from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout, PlanError
from megatron_tulu.rollout.bridge.planner import plan_refit
from megatron_tulu.rollout.bridge.schedule import MIB, buffer_bytes, receive_schedule, reload_calls
from tests.unit.bridge import refit_helpers

small_model = partial(refit_helpers.small_model, layers=4)


def test_reload_calls_take_buckets_while_the_worst_case_fits():
    costs = [(50, 10), (30, 5), (30, 5), (60, 20), (10, 1)]  # (full-size, message) bytes
    calls, peak = reload_calls(costs, 100)
    # [50+10] [50+30+5] [+30: 110 > 100 -> new call] ...
    assert calls == [[0, 1], [2], [3, 4]]
    assert peak == max(60, 50 + 30 + 5, 30 + 5, 60 + 20, 60 + 10 + 1)
    assert reload_calls(costs, None) == ([[0, 1, 2, 3, 4]], 50 + 30 + 30 + 60 + 20)  # at bucket 3
    assert reload_calls([], 100) == ([], 0)


@pytest.mark.parametrize("bound", [None, 10**9, 300_000, 120_000])
def test_each_engine_rank_stays_within_the_bound(bound):
    plan = plan_refit(LearnerLayout(tp=2, pp=2, dp=1, model=small_model(), dtype_bytes=4), EngineLayout(tp=2))
    sched = receive_schedule(plan, bucket_bytes=40_000, elem_size=4, receive_buffer_bytes=bound)
    total = sum(b.full_bytes for b in sched.buckets)
    assert total == sum(buffer_bytes(plan, n, 4) for n in plan.hf_shapes)
    for r in plan.receivers():
        calls = sched.calls[r]
        assert [k for c in calls for k in c] == list(range(len(sched.buckets)))  # in order, all once
        assert sched.floor[r] <= sched.peak[r] <= (bound or total + sched.floor[r])
        if bound is None or bound >= total + sched.floor[r]:
            assert len(calls) == 1
        msg = [b.message_bytes(r) for b in sched.buckets]
        for c in calls:  # the worst case of every call (vLLM holding all of it) is within the peak
            held = 0
            for k in c:
                assert held + sched.buckets[k].full_bytes + msg[k] <= sched.peak[r]
                held += sched.buckets[k].full_bytes
    assert sum(sum(b.message_bytes(r) for b in sched.buckets) for r in plan.receivers()) == plan.total_bytes


def test_a_bound_below_the_largest_bucket_is_refused_with_the_minimum():
    plan = plan_refit(LearnerLayout(tp=2, pp=1, dp=1, model=small_model(), dtype_bytes=4), EngineLayout(tp=2))
    floor = max(receive_schedule(plan, bucket_bytes=1, elem_size=4, receive_buffer_bytes=None).floor.values())
    # embedding: 301 x 64 fp32 full-size + rank 0's rows of vLLM's padded vocabulary (320 / 2)
    assert floor == 301 * 64 * 4 + 160 * 64 * 4
    assert receive_schedule(plan, bucket_bytes=1, elem_size=4, receive_buffer_bytes=floor).peak
    with pytest.raises(PlanError, match=r"refit_receive_buffer_mb=.*model\.embed_tokens\.weight.*at least 1"):
        receive_schedule(plan, bucket_bytes=1, elem_size=4, receive_buffer_bytes=floor - 1)
    with pytest.raises(PlanError, match="must be positive"):
        receive_schedule(plan, bucket_bytes=1, elem_size=4, receive_buffer_bytes=0)


def test_one_communicator_instead_of_one_per_link():
    plan = plan_refit(
        LearnerLayout(tp=2, pp=2, dp=2, model=small_model(), dtype_bytes=2), EngineLayout(tp=2, num_engines=2)
    )
    sched = receive_schedule(plan, bucket_bytes=40_000, elem_size=2, receive_buffer_bytes=None)
    s = sched.summary()
    assert s["communicators"] == 1
    assert s["unbatched_pair_communicators"] == len(plan.bytes_per_link()) > 8
    ranks = s["engine_ranks"]
    assert [(r["engine"], r["rank"]) for r in ranks] == plan.receivers()
    for r in ranks:
        assert r["communicators"] == 1
        assert r["peers"] == len({t.src_rank for t in plan.for_receiver(r["engine"], r["rank"])})
        assert r["peak_receive_buffer_bytes"] == sched.peak[(r["engine"], r["rank"])]
    assert sum(r["peers"] for r in ranks) == s["unbatched_pair_communicators"]


def test_engine_memory_counts_the_refit_buffers():
    m405 = ModelConfig(
        name="llama3.1_405b", num_layers=126, hidden_size=16384, ffn_hidden_size=53248,
        num_attention_heads=128, num_query_groups=8, kv_channels=128, vocab_size=128256,
    )  # fmt: skip
    base = estimate_engine_memory(m405, 16, seq_len=3072, gpu_memory_utilization=0.9)
    mb = RolloutConfig().refit_receive_buffer_mb
    with_refit = estimate_engine_memory(
        m405, 16, seq_len=3072, gpu_memory_utilization=0.9, refit_receive_buffer_mb=mb
    )
    assert with_refit.refit_buffers == mb * MIB
    assert with_refit.total == pytest.approx(base.total + mb * MIB)
    assert with_refit.kv_cache == base.kv_cache  # outside vLLM's budget: the KV cache keeps its share
    assert with_refit.total < 80 * GB  # 72 GB of vLLM + 4.8 GB of refit buffers fit an 80 GB GPU
    table = format_memory_table(_learner_stub(), with_refit, limit_gb=80)
    assert (
        "refit receive buffers (outside vLLM)" in table
        and "DOES NOT FIT" not in table.split("vLLM engine")[1]
    )
    big = estimate_engine_memory(
        m405, 16, seq_len=3072, gpu_memory_utilization=0.9, refit_receive_buffer_mb=8192
    )
    assert big.total > 80 * GB
    assert "DOES NOT FIT" in format_memory_table(_learner_stub(), big, limit_gb=80).split("vLLM engine")[1]


def _learner_stub():
    from megatron_tulu.algorithms.memory import estimate_learner_memory

    return estimate_learner_memory(small_model(), 1, 1, 1, seq_len=128, reference=False)


def test_plan_refit_reports_the_405b_preset(tmp_path, capsys):
    """``plan-refit preset=rlvr_tulu3_405b``: one communicator where unbatched send/recv would
    create 892, and every engine rank's peak receive buffers (the embedding bucket, 4.47 GB) under
    the default bound; a bound below that bucket is one error line."""
    from megatron_tulu.commands.plan_refit import main

    out = tmp_path / "plan.json"
    assert main(["preset=rlvr_tulu3_405b", "--learner-gpus", "224", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "refit group: 1 NCCL communicator" in text and "892 2-rank ones" in text
    data = json.loads(out.read_text())
    assert data["engine"] == {"tp": 16, "num_engines": 2, "weight_dtype": "auto"}
    assert data["communicators"] == 1 and data["unbatched_pair_communicators"] == 892
    assert data["bucket_bytes"] == 256 * MIB and data["receive_buffer_bytes"] == 4608 * MIB
    ranks = data["engine_ranks"]
    assert len(ranks) == 32 and all(r["communicators"] == 1 for r in ranks)
    embedding = 128256 * 16384 * 2  # full-size bf16, 4.2 GB
    assert all(r["peak_receive_buffer_bytes"] == embedding + embedding // 16 for r in ranks)
    assert main(["preset=rlvr_tulu3_405b", "--learner-gpus", "224", "--receive-buffer-mb", "4096"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: plan-refit:") and len(err.strip().splitlines()) == 1
    assert "at least 4259" in err


def test_split_reload_notices_are_held_back_and_summarised():
    """vLLM warns, per reload_weights call, about what that call did not load; a split refit
    makes that every layer of the other calls. One call: the notices pass unchanged; several:
    one warning about what no call loaded, if anything."""
    import logging

    from megatron_tulu.rollout.worker_ext import _FAILED, _INPLACE_LOGGER, _LAYERWISE_LOGGER, _NOT_LOADED
    from megatron_tulu.rollout.worker_ext import _SplitReloadNotices as Notices

    class Collect(logging.Handler):  # on the loggers themselves: vLLM's do not propagate
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    loggers = [logging.getLogger(_INPLACE_LOGGER), logging.getLogger(_LAYERWISE_LOGGER)]
    inplace, layerwise = loggers
    notices, seen = Notices(), Collect()
    for logger in loggers:
        logger.addFilter(notices)
        logger.addHandler(seen)
    try:
        notices.active = True
        inplace.warning(_NOT_LOADED, {"a"})
        layerwise.warning(_FAILED, "QKVParallelLinear")
        assert seen.messages == []
        notices.release(1)  # one call: vLLM's own notices, as they were
        assert seen.messages == [_NOT_LOADED % ({"a"},), "QKVParallelLinear: Failed to load weights"]
        seen.messages.clear()
        notices.active = True
        for missing in ({"a", "x"}, {"b", "x"}, {"a", "b", "x"}):
            inplace.warning(_NOT_LOADED, missing)
            layerwise.warning(_FAILED, "RowParallelLinear")
        notices.release(3)  # three calls: only "x" was never loaded
        assert seen.messages == ["refit: no reload call of 3 loaded these weights: ['x']"]
        seen.messages.clear()
        notices.active = True
        inplace.warning(_NOT_LOADED, {"a"})
        inplace.warning(_NOT_LOADED, {"b"})
        notices.release(2)  # every weight was loaded by some call: silence
        assert seen.messages == []
        inplace.warning("something else")  # inactive: everything passes
        assert seen.messages == ["something else"]
    finally:
        for logger in loggers:
            logger.removeFilter(notices)
            logger.removeHandler(seen)
