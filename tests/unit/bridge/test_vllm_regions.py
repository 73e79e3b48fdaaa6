"""``vllm_region`` against vLLM's own weight loaders (run in-process with a faked TP group).

Each HF tensor is filled with ``1 + flat index``; the vLLM layer of rank ``n`` of ``N`` loads it
through its real ``weight_loader``; the indices found in the parameter are exactly the box
``vllm_region`` predicts.
"""

from __future__ import annotations

import types
from unittest import mock

import pytest
import torch

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.rollout.bridge.layouts import box_numel, hf_shape, vllm_region

lin = pytest.importorskip("vllm.model_executor.layers.linear")
vpe = pytest.importorskip("vllm.model_executor.layers.vocab_parallel_embedding")
ps = pytest.importorskip("vllm.distributed.parallel_state")


def _model(heads, groups, vocab):
    return ModelConfig(
        num_layers=1,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=4,
        vocab_size=vocab,
    )


def _index(shape):
    numel = 1
    for d in shape:
        numel *= d
    return torch.arange(1, numel + 1, dtype=torch.float32).reshape(shape)


def _loaded(model, n, tp) -> dict[str, set[int]]:
    """HF name -> set of flat indices rank n's vLLM layers hold after loading."""
    p = "model.layers.0."
    d = model.kv_channels
    out: dict[str, set[int]] = {}
    with mock.patch.object(ps, "_TP", types.SimpleNamespace(rank_in_group=n, world_size=tp)):
        qkv = lin.QKVParallelLinear(
            model.hidden_size,
            d,
            model.num_attention_heads,
            model.num_query_groups,
            bias=False,
            params_dtype=torch.float32,
        )
        gate_up = lin.MergedColumnParallelLinear(
            model.hidden_size, [model.ffn_hidden_size] * 2, bias=False, params_dtype=torch.float32
        )
        o = lin.RowParallelLinear(
            model.num_attention_heads * d, model.hidden_size, bias=False, params_dtype=torch.float32
        )
        down = lin.RowParallelLinear(
            model.ffn_hidden_size, model.hidden_size, bias=False, params_dtype=torch.float32
        )
        emb = vpe.VocabParallelEmbedding(model.vocab_size, model.hidden_size, params_dtype=torch.float32)
        head = vpe.ParallelLMHead(model.vocab_size, model.hidden_size, params_dtype=torch.float32)
        for layer, name, shard_id in (
            (qkv, "self_attn.q_proj.weight", "q"),
            (qkv, "self_attn.k_proj.weight", "k"),
            (qkv, "self_attn.v_proj.weight", "v"),
            (gate_up, "mlp.gate_proj.weight", 0),
            (gate_up, "mlp.up_proj.weight", 1),
            (o, "self_attn.o_proj.weight", None),
            (down, "mlp.down_proj.weight", None),
            (emb, "model.embed_tokens.weight", None),
            (head, "lm_head.weight", None),
        ):
            hf_name = name if name.startswith(("model.embed", "lm_head")) else p + name
            w = layer.weight
            w.data.zero_()  # load one part at a time: the nonzero entries are this part's indices
            args = (w, _index(hf_shape(model, hf_name))) + (() if shard_id is None else (shard_id,))
            w.weight_loader(*args)
            out[hf_name] = set(w.data[w.data > 0].long().tolist())
    return out


def _box_indices(shape, box) -> set[int]:
    idx = _index(shape)
    return set(idx[tuple(slice(a, b) for a, b in box)].long().flatten().tolist())


@pytest.mark.parametrize(
    "heads, groups, vocab, tp",
    [
        (8, 2, 1001, 1),
        (8, 2, 1001, 2),
        (8, 2, 1001, 4),
        (8, 2, 1001, 8),
        (8, 4, 65, 4),
        (16, 2, 257, 16),
        (8, 8, 99, 2),
    ],
)
def test_vllm_region_matches_vllm_loaders(heads, groups, vocab, tp):
    model = _model(heads, groups, vocab)
    for n in range(tp):
        loaded = _loaded(model, n, tp)
        for hf_name, got in loaded.items():
            box = vllm_region(model, hf_name, n, tp)
            want = _box_indices(hf_shape(model, hf_name), box)
            assert len(want) == box_numel(box)
            assert got == want, (hf_name, n, tp, box)
