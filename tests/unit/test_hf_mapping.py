"""Pure HF <-> Megatron tensor mapping: fused QKV interleave, per-rank [gate; up], vocab padding."""

import pytest
import torch

from megatron_tulu.models.hf_mapping import (
    FC1,
    QKV,
    REPL,
    ROW,
    VOCAB,
    Shapes,
    hf_from_shards,
    hf_sources,
    interleave_qkv,
    shard_from_hf,
    split_qkv,
)

S = Shapes(hidden=16, ffn=24, heads=8, groups=4, head_dim=2, vocab=37, padded_vocab=48)


def test_qkv_interleave_layout_per_group():
    q = torch.arange(8 * 2).float().repeat_interleave(16).reshape(16, 16)  # row i holds value i
    k = 100 + torch.arange(4 * 2).float().repeat_interleave(16).reshape(8, 16)
    v = 200 + torch.arange(4 * 2).float().repeat_interleave(16).reshape(8, 16)
    fused = interleave_qkv(q, k, v, S)[:, 0].tolist()
    # group 0: q heads 0,1 (rows 0-3), k head 0 (rows 100,101), v head 0 (200,201); then group 1...
    assert fused[:8] == [0, 1, 2, 3, 100, 101, 200, 201]
    assert fused[8:16] == [4, 5, 6, 7, 102, 103, 202, 203]
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(interleave_qkv(q, k, v, S), S), (q, k, v)))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_and_gather_round_trip(tp):
    g = torch.Generator().manual_seed(0)
    cases = {
        QKV: [
            torch.randn(16, 16, generator=g),
            torch.randn(8, 16, generator=g),
            torch.randn(8, 16, generator=g),
        ],
        FC1: [torch.randn(24, 16, generator=g), torch.randn(24, 16, generator=g)],
        ROW: [torch.randn(16, 24, generator=g)],
        VOCAB: [torch.randn(37, 16, generator=g)],
        REPL: [torch.randn(16, generator=g)],
    }
    for kind, full in cases.items():
        shards = [shard_from_hf(kind, full, S, tp, r) for r in range(tp)]
        back = hf_from_shards(kind, shards, S)
        assert all(torch.equal(a, b) for a, b in zip(back, full)), kind


def test_fc1_shard_is_gate_then_up_of_that_rank():
    gate, up = torch.arange(24.0).unsqueeze(1), 100 + torch.arange(24.0).unsqueeze(1)
    shard = shard_from_hf(FC1, [gate, up], S, tp=2, tp_rank=1)
    assert shard[:, 0].tolist() == list(range(12, 24)) + [100 + i for i in range(12, 24)]


def test_vocab_padding_rows_are_zero_and_dropped_on_export():
    emb = torch.randn(37, 16)
    shards = [shard_from_hf(VOCAB, [emb], S, 2, r) for r in range(2)]
    assert shards[1].shape == (24, 16) and torch.count_nonzero(shards[1][13:]) == 0
    assert torch.equal(hf_from_shards(VOCAB, shards, S)[0], emb)


def test_hf_source_names():
    assert hf_sources("decoder.layers.1.self_attention.linear_qkv.weight", 5, False)[1] == [
        "model.layers.5.self_attn.q_proj.weight",
        "model.layers.5.self_attn.k_proj.weight",
        "model.layers.5.self_attn.v_proj.weight",
    ]
    assert hf_sources("output_layer.weight", None, True) == (VOCAB, ["model.embed_tokens.weight"])
    assert hf_sources("mlp.linear_fc1.layer_norm_weight".join(["decoder.layers.0.", ""]), 0, False)[1] == [
        "model.layers.0.post_attention_layernorm.weight"
    ]
    with pytest.raises(KeyError):
        hf_sources("decoder.layers.0.something_new.weight", 0, False)
