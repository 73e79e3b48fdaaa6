"""The refit planner, executed in memory over a seeded sample of learner / engine layouts.

For each layout: random full HF tensors -> every learner rank's Megatron local tensors (via
``shard_from_hf``) -> run the plan's copies into per-vLLM-rank full-size buffers -> every element
of every rank's loader region is written exactly once with the HF value, nothing outside it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from functools import partial

import pytest
import torch

from megatron_tulu.rollout.bridge.layouts import (
    EngineLayout,
    LearnerLayout,
    PlanError,
    box_numel,
    fused_group,
    hf_shape,
    hf_tensor_names,
    index_pieces,
    learner_coords,
    learner_global_rank,
    learner_pieces,
    megatron_params,
    vllm_region,
)
from megatron_tulu.rollout.bridge.planner import naive_broadcast_summary, plan_refit
from tests.unit.bridge import refit_helpers
from tests.unit.bridge.refit_helpers import learner_tensors, random_hf

# 8 query heads of 8, and a vocabulary (1001) that neither vLLM (64) nor Megatron (128 x TP) padding divides
small_model = partial(refit_helpers.small_model, heads=8, head_dim=8, vocab=1001)


def execute(plan, learner: LearnerLayout, engine: EngineLayout, hf: dict[str, torch.Tensor]) -> None:
    """Run the plan's copies and check every destination element (the test's core assertion)."""
    model = learner.model
    local = learner_tensors(learner, hf)
    bufs = {
        (e, n, name): torch.full(t.shape, float("nan"))
        for name, t in hf.items()
        for e in range(engine.num_engines)
        for n in range(engine.tp)
    }
    counts = {key: torch.zeros(buf.shape, dtype=torch.int32) for key, buf in bufs.items()}
    esz = learner.dtype_bytes
    for t in plan.transfers:
        tp_rank, pp_rank, _ = learner_coords(t.src_rank, learner.tp, learner.dp)
        assert (t.src_param.tp_rank, t.src_param.pp_stage) == (tp_rank, pp_rank), t
        src = local[t.src_rank][t.src_param.name][tuple(slice(a, b) for a, b in t.src_slice)]
        dst = tuple(slice(a, b) for a, b in t.dst_slice)
        assert t.nbytes == src.numel() * esz and box_numel(t.dst_slice) == src.numel()
        bufs[(t.dst_engine, t.dst_rank, t.hf_name)][dst] = src
        counts[(t.dst_engine, t.dst_rank, t.hf_name)][dst] += 1
    for (e, n, name), buf in bufs.items():
        region = tuple(slice(a, b) for a, b in vllm_region(model, name, n, engine.tp, engine.vocab_padding))
        want = torch.zeros_like(counts[(e, n, name)])
        want[region] = 1
        assert torch.equal(counts[(e, n, name)], want), f"engine {e} rank {n} {name}: coverage"
        assert torch.equal(buf[region], hf[name][region]), f"engine {e} rank {n} {name}: values"


# ------------------------------------------------------------------------------ sampled grid
def _valid_grid():
    """(learner tp, pp, dp, engine N, num_engines, model kwargs) combinations that must plan."""
    combos = []
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4):
            for dp in (1, 2):
                for n in (1, 2, 4, 8, 16):
                    for heads, groups in ((8, 2), (8, 4), (16, 8), (16, 2), (16, 16), (8, 8)):
                        if groups % tp or heads % n or (n % groups and groups % n):
                            continue
                        combos.append((tp, pp, dp, n, heads, groups))
    return combos


def _sample(k: int, seed: int = 20240611):
    rng = random.Random(seed)
    grid = _valid_grid()
    picked = rng.sample(grid, k)
    # make sure the corners are in: TP8 learner, N=16 engine with KV replicated, PP4, TP1 -> N1
    must = [
        (8, 4, 2, 16, 16, 8),
        (1, 1, 1, 1, 8, 2),
        (2, 2, 2, 8, 8, 2),
        (4, 1, 2, 2, 8, 4),
        (8, 2, 1, 4, 16, 8),
    ]
    cases = []
    for i, (tp, pp, dp, n, heads, groups) in enumerate(must + picked):
        cases.append(
            dict(
                tp=tp,
                pp=pp,
                dp=dp,
                n=n,
                engines=rng.choice((1, 1, 2)),
                model=dict(
                    heads=heads,
                    groups=groups,
                    head_dim=rng.choice((4, 8)),
                    hidden=rng.choice((64, 96, 128)),
                    ffn=rng.choice((96, 160)),
                    vocab=rng.choice((1001, 3999, 257, 64)),
                    layers=pp * rng.choice((1, 2)),
                    tied=bool(i % 2),
                ),
                seed=i,
            )
        )
    return cases


CASES = _sample(80)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "tp{tp}pp{pp}dp{dp}-N{n}x{engines}".format(**c))
def test_plan_covers_every_shard_exactly_once(case):
    model = small_model(**case["model"])
    learner = LearnerLayout(case["tp"], case["pp"], case["dp"], model, dtype_bytes=4)
    engine = EngineLayout(case["n"], case["engines"])
    plan = plan_refit(learner, engine)
    execute(plan, learner, engine, random_hf(model, case["seed"]))

    # exactly the shard: received / shard == 1.00 for every vLLM rank
    ratio = plan.receive_ratio()
    assert set(ratio.values()) == {1.0}
    for (e, n), got in plan.bytes_per_receiver().items():
        expect = sum(
            box_numel(vllm_region(model, name, n, engine.tp)) * learner.dtype_bytes
            for name in hf_tensor_names(model)
        )
        assert got == expect == plan.shard_bytes[(e, n)]

    # senders spread over DP replicas: for every model-parallel coordinate (tp, pp), all its DP
    # replicas send when it has enough slices, and their loads differ by at most one slice
    # (the greedy always picks the least-loaded replica)
    if learner.dp > 1:
        load, sizes = defaultdict(lambda: [0] * learner.dp), defaultdict(list)
        for t in plan.transfers:
            tp_rank, pp_rank, dp_rank = learner_coords(t.src_rank, learner.tp, learner.dp)
            load[(tp_rank, pp_rank)][dp_rank] += t.nbytes
            sizes[(tp_rank, pp_rank)].append(t.nbytes)
        for coord, per_dp in load.items():
            assert max(per_dp) - min(per_dp) <= max(sizes[coord]), (coord, per_dp)
            if len(sizes[coord]) >= learner.dp:
                assert min(per_dp) > 0, (coord, per_dp)


@pytest.mark.parametrize("case", CASES[:12], ids=lambda c: "tp{tp}pp{pp}".format(**c))
def test_analytic_pieces_match_index_tensors(case):
    model = small_model(**case["model"])
    learner = LearnerLayout(case["tp"], case["pp"], case["dp"], model)
    for name in hf_tensor_names(model):
        analytic = sorted(learner_pieces(learner, name), key=repr)
        derived = sorted(index_pieces(learner, name), key=repr)
        assert analytic == derived, name


def test_qkv_runs_are_merged_per_group():
    # learner TP1 holds all 4 groups; vLLM N=2 rank 0 needs q heads 0..3 = groups 0,1:
    # one q run per group (k/v rows sit between groups in Megatron's interleave), one k and v run each.
    model = small_model(heads=8, groups=4, layers=1)
    plan = plan_refit(LearnerLayout(1, 1, 1, model), EngineLayout(2))
    q = [t for t in plan.for_receiver(0, 0) if t.hf_name == "model.layers.0.self_attn.q_proj.weight"]
    assert sorted(t.dst_slice[0] for t in q) == [(0, 16), (16, 32)]
    assert [t.src_slice[0] for t in sorted(q, key=lambda t: t.dst_slice)] == [(0, 16), (32, 48)]
    # learner TP2 -> N=8: each vLLM rank takes one q head: a single transfer per tensor
    plan = plan_refit(LearnerLayout(2, 1, 1, model), EngineLayout(8))
    for n in range(8):
        per_name = defaultdict(int)
        for t in plan.for_receiver(0, n):
            per_name[t.hf_name] += 1
        assert per_name["model.layers.0.self_attn.q_proj.weight"] == 1
        assert per_name["model.layers.0.self_attn.k_proj.weight"] == 1


def test_kv_replicated_when_engine_tp_exceeds_groups():
    model = small_model(heads=16, groups=2, head_dim=8, layers=1)
    for n in range(16):
        assert vllm_region(model, "model.layers.0.self_attn.k_proj.weight", n, 16)[0] == (
            n // 8 * 8,
            n // 8 * 8 + 8,
        )
    assert vllm_region(model, "model.layers.0.self_attn.v_proj.weight", 1, 2)[0] == (8, 16)


def test_vocab_region_clips_to_real_rows():
    model = small_model(vocab=65)  # vLLM pads to 128: at N=4 rows [96,128) are all padding
    assert vllm_region(model, "lm_head.weight", 2, 4)[0] == (64, 65)
    assert vllm_region(model, "lm_head.weight", 3, 4)[0] == (65, 65)
    learner = LearnerLayout(2, 1, 1, model)
    plan = plan_refit(learner, EngineLayout(4))
    assert not [t for t in plan.for_receiver(0, 3) if t.hf_name == "lm_head.weight"]
    execute(plan, learner, EngineLayout(4), random_hf(model, 0))


def test_tied_embeddings_use_both_holders_and_no_lm_head():
    model = small_model(tied=True, layers=2)
    learner = LearnerLayout(1, 2, 1, model)
    names = {i.name for i in megatron_params(learner) if "model.embed_tokens.weight" in i.hf_names}
    assert names == {"embedding.word_embeddings.weight", "output_layer.weight"}
    plan = plan_refit(learner, EngineLayout(4))
    assert "lm_head.weight" not in plan.hf_shapes
    stages = {t.src_param.pp_stage for t in plan.transfers if t.hf_name == "model.embed_tokens.weight"}
    assert stages == {0, 1}  # the copy on the last stage shares the load
    # PP1: only the embedding parameter exists
    assert "output_layer.weight" not in {i.name for i in megatron_params(LearnerLayout(1, 1, 1, model))}


def test_transformer_engine_norm_names():
    model = small_model(layers=2)
    learner = LearnerLayout(2, 2, 1, model, transformer_impl="transformer_engine")
    plan = plan_refit(learner, EngineLayout(2))
    src = {t.src_param.name for t in plan.transfers if t.hf_name.endswith("input_layernorm.weight")}
    assert src == {"decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"}
    execute(plan, learner, EngineLayout(2), random_hf(model, 3))


def test_global_rank_matches_megatron_rank_generator():
    from megatron.core.parallel_state import RankGenerator

    tp, dp, pp = 2, 3, 4
    gen = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
    for group in gen.get_ranks("tp"):
        for tp_rank, rank in enumerate(group):
            assert learner_coords(rank, tp, dp)[0] == tp_rank
    for group in gen.get_ranks("dp"):
        for dp_rank, rank in enumerate(group):
            assert learner_coords(rank, tp, dp)[2] == dp_rank
    for group in gen.get_ranks("pp"):
        for pp_rank, rank in enumerate(group):
            assert learner_coords(rank, tp, dp)[1] == pp_rank
    for rank in range(tp * dp * pp):
        assert (
            learner_global_rank(*learner_coords(rank, tp, dp)[:2], learner_coords(rank, tp, dp)[2], tp, dp)
            == rank
        )


@pytest.mark.parametrize(
    "learner_kw, model_kw, engine_kw, match",
    [
        (dict(tp=1, pp=1), dict(heads=8, groups=2), dict(tp=16), "does not divide num_attention_heads"),
        (dict(tp=1, pp=1), dict(heads=12, groups=6), dict(tp=4), "one to divide the other"),
        (dict(tp=1, pp=3), dict(layers=4), dict(tp=1), "does not divide num_layers"),
        (dict(tp=1, pp=4), dict(layers=2), dict(tp=1), "own no layers"),
        (dict(tp=4, pp=1), dict(groups=2), dict(tp=1), "does not divide num_query_groups"),
        (dict(tp=1, pp=1), dict(ffn=100), dict(tp=8), "ffn_hidden_size"),
        (dict(tp=1, pp=1), dict(vocab=64), dict(tp=128), "heads"),
    ],
)
def test_bad_layouts_raise(learner_kw, model_kw, engine_kw, match):
    model = small_model(**model_kw)
    with pytest.raises(PlanError, match=match):
        plan_refit(LearnerLayout(dp=1, model=model, **learner_kw), EngineLayout(**engine_kw))


def test_engine_model_mismatch_and_vocab_padding_raise():
    model = small_model(vocab=1001)
    other = small_model(vocab=1000)
    with pytest.raises(PlanError, match="vocab_size: learner 1001 != engine 1000"):
        plan_refit(LearnerLayout(1, 1, 1, model), EngineLayout(2, model=other))
    with pytest.raises(PlanError, match="padded vocab"):
        plan_refit(LearnerLayout(1, 1, 1, model), EngineLayout(2, vocab_padding=1))  # 1001 rows over 2
    with pytest.raises(PlanError, match="padded vocab"):
        plan_refit(LearnerLayout(2, 1, 1, model, padded_vocab=1001), EngineLayout(2))
    plan_refit(LearnerLayout(1, 1, 1, model), EngineLayout(2, model=small_model(vocab=1001)))


def test_fused_groups_and_reload_order():
    assert fused_group("model.layers.3.self_attn.k_proj.weight") == (
        "model.layers.3.self_attn.q_proj.weight",
        "model.layers.3.self_attn.k_proj.weight",
        "model.layers.3.self_attn.v_proj.weight",
    )
    assert fused_group("model.layers.0.mlp.up_proj.weight")[0] == "model.layers.0.mlp.gate_proj.weight"
    assert fused_group("model.norm.weight") == ("model.norm.weight",)
    plan = plan_refit(LearnerLayout(1, 1, 1, small_model(layers=1)), EngineLayout(1))
    groups = plan.reload_groups()
    assert sum(len(g) for g in groups) == len(plan.hf_shapes)


def test_naive_baseline_and_prediction():
    model = small_model(heads=16, groups=8, layers=4)
    learner = LearnerLayout(2, 2, 2, model, dtype_bytes=2)
    engine = EngineLayout(8)
    plan = plan_refit(learner, engine)
    naive = naive_broadcast_summary(learner, engine)
    full = sum(box_numel(tuple((0, d) for d in hf_shape(model, n))) * 2 for n in hf_tensor_names(model))
    assert set(naive.bytes_per_receiver.values()) == {full}
    assert set(plan.receive_ratio().values()) == {1.0}
    assert min(naive.receive_ratio().values()) > 4  # every rank gets ~N x its shard
    # 8 learner ranks on node 0, the engine on node 1: ours is bound by a receiver's NIC
    ours = plan.predict_seconds(3600, 400, 8)
    worst_recv = max(plan.bytes_per_receiver().values())
    assert ours == pytest.approx(max(worst_recv, max(plan.bytes_per_sender().values())) / (400e9 / 8))
    assert naive.predict_seconds(3600, 400, 8) == pytest.approx(full / (400e9 / 8))
    s = plan.summary()
    assert s["receive_ratio"] == {"min": 1.0, "max": 1.0}
    assert s["senders"] == learner.world_size  # every learner rank helps


def test_merge_joins_runs_contiguous_on_both_sides():
    from megatron_tulu.rollout.bridge.layouts import MegatronParam
    from megatron_tulu.rollout.bridge.planner import Transfer, _merge

    p = MegatronParam("decoder.layers.0.mlp.linear_fc2.weight", 0, 0)
    a = Transfer("x", 3, p, ((0, 4), (0, 8)), 0, 1, ((10, 14), (0, 8)), 64)
    b = Transfer("x", 3, p, ((4, 6), (0, 8)), 0, 1, ((14, 16), (0, 8)), 32)
    c = Transfer("x", 3, p, ((7, 8), (0, 8)), 0, 1, ((16, 17), (0, 8)), 16)  # gap on the source side
    merged = sorted(_merge([b, c, a]), key=lambda t: t.dst_slice)
    assert [(t.src_slice, t.dst_slice, t.nbytes) for t in merged] == [
        (((0, 6), (0, 8)), ((10, 16), (0, 8)), 96),
        (((7, 8), (0, 8)), ((16, 17), (0, 8)), 16),
    ]


def test_plan_refit_cli(tmp_path, capsys):
    import json

    from megatron_tulu.commands.plan_refit import main

    out = tmp_path / "plan.json"
    rc = main(["model=tiny", "parallel.tp=2", "parallel.pp=2", "--learner-gpus", "8", "--engine-tp", "2",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "learner TP2 x PP2 x DP2 = 8 GPUs" in text and "received / shard" in text
    data = json.loads(out.read_text())
    assert data["ours"]["receive_ratio"] == {"min": 1.0, "max": 1.0}
    assert data["naive_broadcast"]["receive_ratio"]["min"] > 1.0
    assert main(["model=tiny", "parallel.pp=3", "--engine-tp", "2"]) == 2  # 4 layers over PP3
    err = capsys.readouterr().err
    assert "does not divide num_layers=4" in err and err.startswith("error: plan-refit:")
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert main(["model=tiny", "parallel.tp=2", "--learner-gpus", "3"]) == 2
