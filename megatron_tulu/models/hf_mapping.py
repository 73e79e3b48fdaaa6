"""Pure tensor mapping between HF Llama and Megatron-Core GPTModel parameters.

Megatron layouts that differ from HF:
- ``linear_qkv``: rows interleaved per query group: for each KV group g,
  ``[q heads of g (nq/ng * d rows), k_g (d rows), v_g (d rows)]``. TP rank r holds groups
  ``[r*ng/tp, (r+1)*ng/tp)``, i.e. a contiguous row block of the interleaved tensor.
- ``linear_fc1``: ``[gate; up]`` *per TP rank*: rank r holds ``[gate_r; up_r]``, so the TP=1 tensor
  is ``[gate; up]`` but a TP shard is not a row block of it.
- vocab-parallel embedding / output layer: padded with zero rows to Megatron's padded vocab, then
  row-split over TP.
No torch.distributed here: callers pass full HF tensors and TP coordinates.

It also names the HF tensors as a checkpoint and vLLM see them (:func:`hf_tensor_names`), the
tensors vLLM loads together (:func:`fused_group`) and those a blockwise-FP8 engine or checkpoint
holds as e4m3 + ``weight_scale_inv`` (:func:`fp8_quantized`, :func:`fp8_scale_name`): used by the
FP8 export (:mod:`megatron_tulu.models.fp8_export`) and the refit bridge
(:mod:`megatron_tulu.rollout.bridge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from megatron_tulu.config.schema import ModelConfig

# kinds of mapping
QKV, FC1, COL, ROW, VOCAB, REPL = "qkv", "fc1", "col", "row", "vocab", "replicated"


@dataclass(frozen=True)
class Shapes:
    """The dimensions the mapping needs (from ModelConfig)."""

    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int
    vocab: int
    padded_vocab: int

    @property
    def q_per_group(self) -> int:
        return self.heads // self.groups


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")

# Megatron per-layer suffix -> (kind, HF suffixes under model.layers.{i}.)
_LAYER_MAP: dict[str, tuple[str, tuple[str, ...]]] = {
    "self_attention.linear_qkv.weight": (
        QKV,
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    "self_attention.linear_proj.weight": (ROW, ("self_attn.o_proj.weight",)),
    "mlp.linear_fc1.weight": (FC1, ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": (ROW, ("mlp.down_proj.weight",)),
    # local spec
    "input_layernorm.weight": (REPL, ("input_layernorm.weight",)),
    "pre_mlp_layernorm.weight": (REPL, ("post_attention_layernorm.weight",)),
    # Transformer Engine spec fuses the norms into the following linear
    "self_attention.linear_qkv.layer_norm_weight": (REPL, ("input_layernorm.weight",)),
    "mlp.linear_fc1.layer_norm_weight": (REPL, ("post_attention_layernorm.weight",)),
}


def hf_sources(mcore_name: str, global_layer: int | None, tied: bool) -> tuple[str, list[str]]:
    """Which HF tensors make up Megatron parameter ``mcore_name`` (a chunk-local name).

    ``global_layer`` is the 0-based global index of the layer the name's local index refers to.
    """
    if mcore_name == "embedding.word_embeddings.weight":
        return VOCAB, ["model.embed_tokens.weight"]
    if mcore_name == "output_layer.weight":
        return VOCAB, ["model.embed_tokens.weight" if tied else "lm_head.weight"]
    if mcore_name == "decoder.final_layernorm.weight":
        return REPL, ["model.norm.weight"]
    match = _LAYER.match(mcore_name)
    if match and match.group(2) in _LAYER_MAP:
        if global_layer is None:
            raise ValueError(f"{mcore_name}: a layer parameter needs its global layer index")
        kind, suffixes = _LAYER_MAP[match.group(2)]
        return kind, [f"model.layers.{global_layer}.{s}" for s in suffixes]
    raise KeyError(f"no HF mapping for Megatron parameter {mcore_name!r}")


def expected_hf_shape(hf_name: str, s: Shapes) -> tuple[int, ...]:
    suffix = hf_name.split(".", 3)[-1] if hf_name.startswith("model.layers.") else hf_name
    table = {
        "model.embed_tokens.weight": (s.vocab, s.hidden),
        "lm_head.weight": (s.vocab, s.hidden),
        "model.norm.weight": (s.hidden,),
        "self_attn.q_proj.weight": (s.heads * s.head_dim, s.hidden),
        "self_attn.k_proj.weight": (s.groups * s.head_dim, s.hidden),
        "self_attn.v_proj.weight": (s.groups * s.head_dim, s.hidden),
        "self_attn.o_proj.weight": (s.hidden, s.heads * s.head_dim),
        "mlp.gate_proj.weight": (s.ffn, s.hidden),
        "mlp.up_proj.weight": (s.ffn, s.hidden),
        "mlp.down_proj.weight": (s.hidden, s.ffn),
        "input_layernorm.weight": (s.hidden,),
        "post_attention_layernorm.weight": (s.hidden,),
    }
    if suffix not in table:
        raise KeyError(f"unknown HF Llama tensor {hf_name!r}")
    return table[suffix]


def interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shapes) -> torch.Tensor:
    """HF q/k/v -> Megatron's full (TP=1) per-group interleaved QKV."""
    hidden = q.shape[-1]
    q = q.reshape(s.groups, s.q_per_group * s.head_dim, hidden)
    k = k.reshape(s.groups, s.head_dim, hidden)
    v = v.reshape(s.groups, s.head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def split_qkv(qkv: torch.Tensor, s: Shapes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`interleave_qkv` (for the full, TP-gathered tensor)."""
    hidden = qkv.shape[-1]
    per_group = qkv.reshape(s.groups, (s.q_per_group + 2) * s.head_dim, hidden)
    q_rows = s.q_per_group * s.head_dim
    q = per_group[:, :q_rows].reshape(-1, hidden)
    k = per_group[:, q_rows : q_rows + s.head_dim].reshape(-1, hidden)
    v = per_group[:, q_rows + s.head_dim :].reshape(-1, hidden)
    return q.contiguous(), k.contiguous(), v.contiguous()


def pad_vocab(weight: torch.Tensor, padded_vocab: int) -> torch.Tensor:
    if weight.shape[0] == padded_vocab:
        return weight
    pad = weight.new_zeros(padded_vocab - weight.shape[0], *weight.shape[1:])
    return torch.cat([weight, pad], dim=0)


def shard_from_hf(kind: str, hf: list[torch.Tensor], s: Shapes, tp: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's Megatron tensor built from full HF tensors."""
    if kind == REPL:
        return hf[0]
    if kind == VOCAB:
        return pad_vocab(hf[0], s.padded_vocab).chunk(tp, dim=0)[tp_rank]
    if kind == QKV:
        return interleave_qkv(*hf, s).chunk(tp, dim=0)[tp_rank]
    if kind == FC1:
        gate, up = (t.chunk(tp, dim=0)[tp_rank] for t in hf)
        return torch.cat([gate, up], dim=0)
    if kind == COL:
        return hf[0].chunk(tp, dim=0)[tp_rank]
    if kind == ROW:
        return hf[0].chunk(tp, dim=1)[tp_rank]
    raise ValueError(kind)


def hf_from_shards(kind: str, shards: list[torch.Tensor], s: Shapes) -> list[torch.Tensor]:
    """Full HF tensors (in :func:`hf_sources` order) from every TP rank's Megatron shard."""
    if kind == REPL:
        return [shards[0]]
    if kind == VOCAB:
        return [torch.cat(shards, dim=0)[: s.vocab]]
    if kind == QKV:
        return list(split_qkv(torch.cat(shards, dim=0), s))
    if kind == FC1:
        halves = [shard.chunk(2, dim=0) for shard in shards]
        return [torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)]
    if kind == COL:
        return [torch.cat(shards, dim=0)]
    if kind == ROW:
        return [torch.cat(shards, dim=1)]
    raise ValueError(kind)


def tp_split_dim(kind: str) -> int | None:
    """The dimension along which a kind is split over TP (None: replicated)."""
    return {REPL: None, ROW: 1}.get(kind, 0)


# ------------------------------------------------------------------------------ HF tensor names
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# HF tensors vLLM must receive in the same reload_weights call (fused modules).
_FUSED_SUFFIXES = (
    ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
)

# The HF tensors of Llama that vLLM's ``Fp8Config.get_quant_method`` quantizes: the weights of
# ``LinearBase`` layers (QKVParallelLinear, MergedColumnParallelLinear, RowParallelLinear). The
# embeddings and lm_head (VocabParallelEmbedding / ParallelLMHead) and the RMSNorms get no fp8
# method and stay in the engine dtype.
_FP8_SUFFIXES = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def hf_tensor_names(model: ModelConfig) -> list[str]:
    """The HF tensors vLLM loads, in checkpoint order (no ``lm_head`` when embeddings are tied:
    vLLM skips it and ties ``lm_head`` to ``embed_tokens``)."""
    names = ["model.embed_tokens.weight"]
    for i in range(model.num_layers):
        p = f"model.layers.{i}."
        names += [
            p + "input_layernorm.weight",
            p + "self_attn.q_proj.weight",
            p + "self_attn.k_proj.weight",
            p + "self_attn.v_proj.weight",
            p + "self_attn.o_proj.weight",
            p + "post_attention_layernorm.weight",
            p + "mlp.gate_proj.weight",
            p + "mlp.up_proj.weight",
            p + "mlp.down_proj.weight",
        ]
    names.append("model.norm.weight")
    if not model.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def fused_group(hf_name: str) -> tuple[str, ...]:
    """The HF tensors that must go into the same ``reload_weights`` call as ``hf_name``."""
    match = _HF_LAYER.match(hf_name)
    if match:
        prefix = f"model.layers.{match.group(1)}."
        for group in _FUSED_SUFFIXES:
            if match.group(2) in group:
                return tuple(prefix + s for s in group)
    return (hf_name,)


def fp8_quantized(hf_name: str) -> bool:
    """Whether an fp8_block engine holds ``hf_name`` as e4m3 + ``weight_scale_inv`` (see ``_FP8_SUFFIXES``)."""
    match = _HF_LAYER.match(hf_name)
    return bool(match) and match.group(2) in _FP8_SUFFIXES


def fp8_scale_name(hf_name: str) -> str:
    """``...weight`` -> ``...weight_scale_inv`` (the checkpoint name vLLM's block-fp8 loader reads)."""
    if not hf_name.endswith(".weight"):
        raise ValueError(f"not a weight: {hf_name!r}")
    return hf_name + "_scale_inv"
