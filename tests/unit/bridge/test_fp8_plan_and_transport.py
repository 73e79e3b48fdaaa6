"""fp8_block refits: planner bytes, block-alignment refusals, the transport over real gloo groups
(receivers get exactly the bytes of an offline quantization of the full tensor), the FP8 export
and the engine-start checks. No vLLM engine here (tests/integration/test_fp8_refit.py has one)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from megatron_tulu.kernels.fp8 import FP8_DTYPE, blockwise_fp8_quantize, scale_shape

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.rollout.bridge.layouts import (
    EngineLayout,
    LearnerLayout,
    PlanError,
    box_numel,
    fp8_quantized,
    fp8_scale_box,
    fp8_scale_name,
    hf_tensor_names,
    vllm_region,
)
from megatron_tulu.rollout.bridge.planner import plan_refit
from megatron_tulu.rollout.bridge.transport import (
    RefitSpec,
    plan_fingerprint,
)
from tests.unit.bridge.refit_helpers import (
    random_hf,
    refit_in_threads,
    small_model,
)

pytestmark = pytest.mark.distributed


# GEMM shards of whole 128 x 128 blocks at TP <= 2
aligned_model = partial(small_model, name="fp8", hidden=256, ffn=512, head_dim=128)


def expected_fp8_bytes(model: ModelConfig, rank: int, tp: int) -> tuple[int, int]:
    """(fp8 shard bytes, bf16 shard bytes) of vLLM rank ``rank``, from vLLM's rules directly."""
    fp8 = bf16 = 0
    for name in hf_tensor_names(model):
        region = vllm_region(model, name, rank, tp)
        n = box_numel(region)
        bf16 += 2 * n
        if fp8_quantized(name):
            rows, cols = (b - a for a, b in region)
            fp8 += n + 4 * (-(-rows // 128)) * (-(-cols // 128))
        else:
            fp8 += 2 * n
    return fp8, bf16


def test_quantized_tensors_are_vllms_linear_layers():
    model = aligned_model(layers=1)
    quantized = {n for n in hf_tensor_names(model) if fp8_quantized(n)}
    assert quantized == {
        f"model.layers.0.{s}.weight"
        for s in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
        + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    }
    # embeddings, lm_head and norms stay in the engine dtype (no fp8 method in vLLM)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert not fp8_quantized(name)
    assert (
        fp8_scale_name("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight_scale_inv"
    )
    assert fp8_scale_box(((128, 384), (0, 300))) == ((1, 3), (0, 3))


@pytest.mark.parametrize(
    "tp,pp,dp,etp,ne,dtype_bytes",
    [(2, 1, 1, 2, 1, 4), (1, 2, 1, 2, 1, 2), (2, 2, 2, 1, 2, 2), (1, 1, 1, 4, 1, 4)],
)
def test_fp8_plan_bytes_are_each_ranks_fp8_shard_and_scales(tp, pp, dp, etp, ne, dtype_bytes):
    model = aligned_model()
    learner = LearnerLayout(tp=tp, pp=pp, dp=dp, model=model, dtype_bytes=dtype_bytes)
    plan = plan_refit(learner, EngineLayout(tp=etp, num_engines=ne, weight_dtype="fp8_block"))
    auto = plan_refit(learner, EngineLayout(tp=etp, num_engines=ne))
    got = plan.bytes_per_receiver()
    for (e, n), b in got.items():
        fp8, bf16 = expected_fp8_bytes(model, n, etp)
        assert b == plan.shard_bytes[(e, n)] == fp8
        assert plan.bf16_shard_bytes[(e, n)] == bf16 == auto.shard_bytes[(e, n)] * 2 // dtype_bytes
    assert set(plan.receive_ratio().values()) == {1.0}
    # the same slices reach the same receivers, in fewer bytes
    assert {(t.hf_name, t.receiver, t.dst_slice) for t in plan.transfers} == {
        (t.hf_name, t.receiver, t.dst_slice) for t in auto.transfers
    }
    assert plan_fingerprint(plan) != plan_fingerprint(auto)


def test_gemm_weights_cost_half_plus_one_scale_per_block():
    model = aligned_model(layers=2)
    plan = plan_refit(LearnerLayout(2, 1, 1, model, 2), EngineLayout(2, weight_dtype="fp8_block"))
    gemm = [t for t in plan.transfers if fp8_quantized(t.hf_name)]
    elems = sum(box_numel(t.dst_slice) for t in gemm)
    assert sum(t.nbytes for t in gemm) / (2 * elems) == 0.5 + 4 / (2 * 128 * 128)  # 0.500122...
    s = plan.summary()
    assert s["weight_dtype"] == "fp8_block" and s["bytes_over_bf16_shard"]["max"] < 1.0


def test_large_model_fp8_refit_is_about_half_the_bf16_bytes():
    # Llama-3.1-8B (hidden 4096, 32 heads, 8 KV groups, ffn 14336, vocab 128256, 32 layers)
    model = aligned_model(layers=32, hidden=4096, heads=32, groups=8, head_dim=128, ffn=14336, vocab=128256)
    learner = LearnerLayout(8, 1, 1, model, 2)
    fp8 = plan_refit(learner, EngineLayout(8, weight_dtype="fp8_block"))
    bf16 = plan_refit(learner, EngineLayout(8))
    for r, ratio in fp8.bf16_ratio().items():
        assert ratio == fp8.bytes_per_receiver()[r] / bf16.bytes_per_receiver()[r]
        assert 0.5 < ratio < 0.6  # embeddings / lm_head (13% of 8B's weights) stay bf16
    assert fp8.summary()["predicted_seconds"] < bf16.summary()["predicted_seconds"]


@pytest.mark.parametrize(
    "learner_kw,engine_tp,model_kw,match",
    [
        # tiny model: head_dim 64, 2 KV groups -> 64 KV rows per learner TP2 rank
        (dict(tp=2), 2, dict(head_dim=64), r"k_proj\.weight \[128, 256\], dim 0 .*learner TP2 rank 0's piece \[0, 64\)"),
        # learner TP1 holds whole tensors; the engine's TP4 split of ffn 768 gives 192 rows per rank
        (dict(tp=1), 4, dict(ffn=768), r"gate_proj\.weight \[768, 256\], dim 0 .*vLLM TP4 rank 0's shard \[0, 192\)"),
        # one KV head of 64 rows per query group: even a TP1 learner holds each group's k rows apart
        (dict(tp=1), 4, dict(head_dim=64, heads=8), r"k_proj.*learner TP1 rank 0's piece \[0, 64\)"),
    ],
)  # fmt: skip
def test_misaligned_layouts_are_refused_naming_tensor_and_dim(learner_kw, engine_tp, model_kw, match):
    model = aligned_model(**model_kw)
    learner = LearnerLayout(pp=1, dp=1, model=model, dtype_bytes=2, **learner_kw)
    with pytest.raises(PlanError, match=match) as info:
        plan_refit(learner, EngineLayout(engine_tp, weight_dtype="fp8_block"))
    assert "cuts a 128x128 FP8 block" in str(info.value)
    plan_refit(learner, EngineLayout(engine_tp))  # the same layout is fine for a bf16 engine


def test_ragged_tensor_ends_are_allowed_and_unknown_dtype_refused():
    # hidden 320: the last column block of every GEMM weight is ragged (as in vLLM's own checkpoints)
    model = aligned_model(hidden=320)
    plan = plan_refit(LearnerLayout(2, 1, 1, model, 2), EngineLayout(2, weight_dtype="fp8_block"))
    t = next(t for t in plan.transfers if t.hf_name.endswith("q_proj.weight"))
    assert t.nbytes == box_numel(t.dst_slice) + 4 * 2 * 3  # 256 rows x 320 cols: 2 x 3 blocks
    with pytest.raises(PlanError, match="weight_dtype must be one of"):
        plan_refit(LearnerLayout(2, 1, 1, model, 2), EngineLayout(2, weight_dtype="fp8"))


def test_spec_round_trip_keeps_weight_dtype():
    spec = RefitSpec(
        LearnerLayout(2, 1, 1, aligned_model(), 4), EngineLayout(2, weight_dtype="fp8_block"), "float32"
    )
    back = RefitSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.engine.fp8


@pytest.mark.parametrize(
    "tp,pp,dp,etp,ne,src_dtype",
    [(2, 1, 1, 2, 1, torch.float32), (1, 2, 1, 2, 1, torch.bfloat16), (2, 1, 2, 1, 2, torch.bfloat16)],
)
def test_fp8_transport_delivers_offline_quantization_bytes(tp, pp, dp, etp, ne, src_dtype):
    model = aligned_model(vocab=301)
    hf = random_hf(model, seed=5, dtype=src_dtype)
    learner = LearnerLayout(tp=tp, pp=pp, dp=dp, model=model, dtype_bytes=src_dtype.itemsize)
    engine = EngineLayout(tp=etp, num_engines=ne, weight_dtype="fp8_block")

    def region_of(name, n):
        if name.endswith("_scale_inv"):
            base = name[: -len("_scale_inv")]
            return fp8_scale_box(vllm_region(model, base, n, etp))
        return vllm_region(model, name, n, etp)

    plan, sent, received, seen = refit_in_threads(
        learner, engine, hf, bucket_bytes=300_000, checksums=True, dtype=src_dtype, region=region_of
    )
    for w in received:
        assert w["bytes_received"] == w["shard_bytes"] == plan.shard_bytes[(w["engine"], w["rank"])]
        assert w["weight_dtype"] == "fp8_block"
    assert sum(s["bytes_sent"] for s in sent) == sum(w["bytes_received"] for w in received)
    for e in range(ne):
        for n in range(etp):
            check_receiver(model, hf, seen[(e, n)], n, etp)


def check_receiver(model, hf, got, n, etp):
    """Receiver ``n``'s regions equal the offline quantization of the full HF tensors."""
    for name in hf_tensor_names(model):
        region = tuple(slice(a, b) for a, b in vllm_region(model, name, n, etp))
        if fp8_quantized(name):
            q, s = blockwise_fp8_quantize(hf[name])  # offline, full tensor
            got_q, got_s = got[name], got[fp8_scale_name(name)]
            assert got_q.dtype == FP8_DTYPE and got_s.dtype == torch.float32
            assert torch.equal(got_q.view(torch.uint8), q[region].view(torch.uint8)), name
            sreg = tuple(slice(a, b) for a, b in fp8_scale_box(vllm_region(model, name, n, etp)))
            assert torch.equal(got_s, s[sreg]), name
        else:
            assert got[name].dtype == torch.bfloat16
            assert torch.equal(got[name], hf[name][region].to(torch.bfloat16)), name


def test_export_fp8_block_checkpoint(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from megatron_tulu.models.fp8_export import (
        FP8_QUANTIZATION_CONFIG,
        engine_model_dir,
        export_fp8_block,
        is_fp8_block_checkpoint,
    )

    model = aligned_model(layers=1, vocab=301)
    hf = random_hf(model, seed=1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (src / "tokenizer.json").write_text("{}")
    save_file(hf, str(src / "model.safetensors"))
    out = export_fp8_block(src, tmp_path / "fp8")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == FP8_QUANTIZATION_CONFIG
    assert cfg["torch_dtype"] == "bfloat16" and (out / "tokenizer.json").exists()
    assert is_fp8_block_checkpoint(out) and not is_fp8_block_checkpoint(src)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        for name, t in hf.items():
            if fp8_quantized(name):
                q, s = blockwise_fp8_quantize(t)
                assert torch.equal(f.get_tensor(name).view(torch.uint8), q.view(torch.uint8))
                scale = f.get_tensor(fp8_scale_name(name))
                assert scale.dtype == torch.float32 and tuple(scale.shape) == scale_shape(tuple(t.shape))
                assert torch.equal(scale, s)
            else:
                assert torch.equal(f.get_tensor(name), t.to(torch.bfloat16))
    assert names == set(hf) | {fp8_scale_name(n) for n in hf if fp8_quantized(n)}
    assert engine_model_dir(src, "auto") == src
    assert engine_model_dir(src, "fp8_block", tmp_path / "e") == (tmp_path / "e").resolve()
    assert engine_model_dir(out, "fp8_block") == out
    with pytest.raises(ValueError, match="already quantized"):
        export_fp8_block(out, tmp_path / "again")


def test_engine_start_checks_fp8_checkpoint_and_dtype(tmp_path):
    from megatron_tulu.rollout.engine import _check_weight_dtype

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a blockwise-FP8 checkpoint"):
        _check_weight_dtype(tmp_path, "fp8_block", "bfloat16")
    _check_weight_dtype(tmp_path, "auto", "float32")
    (tmp_path / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})
    )
    _check_weight_dtype(tmp_path, "fp8_block", "bfloat16")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        _check_weight_dtype(tmp_path, "fp8_block", "float32")


def test_plan_refit_cli_reports_both_weight_dtypes(tmp_path, capsys):
    from megatron_tulu.commands.plan_refit import main

    out = tmp_path / "plan.json"
    # llama3.1_8b at learner TP8 -> engine TP8: every GEMM shard is a whole number of blocks
    args = ["model=llama3.1_8b", "parallel.tp=8", "--learner-gpus", "8", "--engine-tp", "8"]
    assert main([*args, "--weight-dtype", "fp8_block", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "engine weights: bf16 vs fp8_block" in text and "received / bf16 shard (max)" in text
    data = json.loads(out.read_text())
    auto, fp8 = data["by_weight_dtype"]["auto"], data["by_weight_dtype"]["fp8_block"]
    assert data["engine"]["weight_dtype"] == "fp8_block" and data["ours"] == fp8
    assert auto["bytes_over_bf16_shard"]["max"] == 1.0
    assert 0.5 < fp8["bytes_over_bf16_shard"]["max"] < 0.6
    assert fp8["predicted_seconds"] < auto["predicted_seconds"]
    assert fp8["receive_ratio"] == {"min": 1.0, "max": 1.0}
    # the tiny model's 64-row KV shards cut blocks: refused with the reason
    assert main(["model=tiny", "parallel.tp=2", "--engine-tp", "2", "--weight-dtype", "fp8_block"]) == 2
    assert "cuts a 128x128 FP8 block" in capsys.readouterr().err
