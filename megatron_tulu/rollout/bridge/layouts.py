"""Where every HF tensor element lives on the Megatron learner and which part each vLLM rank reads.

Everything here is pure (no processes, no torch.distributed) and works in **HF tensor
coordinates**: a *box* is a tuple of half-open ``(start, stop)`` ranges, one per dimension of the
full HF tensor (or of a Megatron rank-local tensor).

Learner side (derived from :mod:`megatron_tulu.models.hf_mapping`): :func:`learner_pieces` lists,
for one HF tensor, every (Megatron chunk-local parameter, PP stage, TP rank) that holds part of
it, with the HF box it holds and where that box sits in the rank-local tensor. The analytic
per-kind rules are checked against :func:`index_pieces`, which pushes a tensor of flat indices
through :func:`~megatron_tulu.models.hf_mapping.shard_from_hf` (tests do this on small shapes).

vLLM side (checked against vLLM 0.32's ``QKVParallelLinear`` / ``MergedColumnParallelLinear`` /
``RowParallelLinear`` / ``VocabParallelEmbedding`` weight loaders): :func:`vllm_region` is the
box of the full-size HF tensor that rank ``n`` of a TP=``N`` engine's loader narrows out:

- ``q_proj``: rows of heads ``[n*H/N, (n+1)*H/N)``;
- ``k_proj``/``v_proj``: if ``N <= G`` the rows of KV heads ``[n*G/N, (n+1)*G/N)``; otherwise the
  KV heads are replicated (``num_kv_head_replicas = N/G``) and rank ``n`` reads KV head
  ``n // (N/G)`` (= ``n*G//N``);
- ``gate_proj``/``up_proj``: rows ``[n*F/N, (n+1)*F/N)``;
- ``o_proj``/``down_proj``: columns split the same way (RowParallelLinear, ``input_dim=1``);
- ``embed_tokens``/``lm_head``: the vocabulary padded to a multiple of 64
  (``DEFAULT_VOCAB_PADDING_SIZE``) is split in equal row blocks, and the loader narrows
  ``[min(start, V), min(end, V))`` of the unpadded HF tensor (it zero-fills the rest);
- norms: the full tensor on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.config.transformer import padded_vocab_size
from megatron_tulu.config.validate import learner_coords as learner_coords  # re-exported
from megatron_tulu.config.validate import learner_global_rank as learner_global_rank  # re-exported
from megatron_tulu.dtypes import BYTES
from megatron_tulu.models.hf_io import shapes_for
from megatron_tulu.models.hf_mapping import (
    COL,
    FC1,
    QKV,
    REPL,
    ROW,
    VOCAB,
    Shapes,
    expected_hf_shape,
    fp8_quantized,
    hf_sources,
    hf_tensor_names,
    shard_from_hf,
)
from megatron_tulu.models.hf_mapping import fp8_scale_name as fp8_scale_name  # re-exported
from megatron_tulu.models.hf_mapping import fused_group as fused_group  # re-exported

Box = tuple[tuple[int, int], ...]

DTYPE_BYTES = BYTES  # config dtype name -> bytes per element (megatron_tulu.dtypes)
VLLM_VOCAB_PADDING = 64  # vllm.model_executor.layers.vocab_parallel_embedding.DEFAULT_VOCAB_PADDING_SIZE

# Engine weight dtypes (``rollout.weight_dtype``): "auto" = the learner's dtype on the wire;
# "fp8_block" = e4m3 with one fp32 scale-inverse per 128x128 block for the GEMM weights vLLM's fp8
# method quantizes, bf16 for everything else.
WEIGHT_DTYPES = ("auto", "fp8_block")
FP8_BLOCK = 128
FP8_SCALE_BYTES = 4  # fp32 weight_scale_inv
FP8_REST_BYTES = 2  # bf16: unquantized tensors of an fp8_block engine (fp32 is refused with fp8)
# Which HF tensors an fp8_block engine quantizes (fp8_quantized, fp8_scale_name), which ones vLLM
# loads together (fused_group) and their order (hf_tensor_names): models/hf_mapping.py, re-exported.


class PlanError(ValueError):
    """A learner / engine layout pair that cannot be refit (raised before anything is sent)."""


# Megatron layer-parameter suffixes per layer spec (names must be keys of hf_mapping's table).
_LAYER_SUFFIXES = {
    "local": (
        "input_layernorm.weight",
        "self_attention.linear_qkv.weight",
        "self_attention.linear_proj.weight",
        "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight",
    ),
    "transformer_engine": (
        "self_attention.linear_qkv.layer_norm_weight",
        "self_attention.linear_qkv.weight",
        "self_attention.linear_proj.weight",
        "mlp.linear_fc1.layer_norm_weight",
        "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight",
    ),
}


# --------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class LearnerLayout:
    """A Megatron learner: TP x PP x DP over ``tp*pp*dp`` ranks (cp = ep = 1, no virtual PP).

    ``transformer_impl`` picks the Megatron parameter names of the norms (the local spec has
    ``input_layernorm``/``pre_mlp_layernorm``; Transformer Engine fuses them into
    ``linear_qkv``/``linear_fc1`` as ``layer_norm_weight``). ``padded_vocab`` defaults to
    Megatron's padding (:func:`~megatron_tulu.config.transformer.padded_vocab_size`).
    """

    tp: int
    pp: int
    dp: int
    model: ModelConfig = field(hash=False, compare=True)
    dtype_bytes: int = 2
    transformer_impl: str = "local"
    padded_vocab: int | None = None

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def layers_per_stage(self) -> int:
        return self.model.num_layers // self.pp

    @property
    def vocab_padded(self) -> int:
        return self.padded_vocab if self.padded_vocab is not None else padded_vocab_size(self.model, self.tp)

    @property
    def shapes(self) -> Shapes:
        return shapes_for(self.model, self.tp, self.vocab_padded)

    def stage_of_layer(self, layer: int) -> tuple[int, int]:
        """(PP stage, chunk-local layer index) of global layer ``layer``."""
        return divmod(layer, self.layers_per_stage)

    def validate(self) -> None:
        m, tp, pp = self.model, self.tp, self.pp
        for label, value in (("tp", tp), ("pp", pp), ("dp", self.dp), ("dtype_bytes", self.dtype_bytes)):
            if value < 1:
                raise PlanError(f"learner {label} must be >= 1, got {value}")
        if self.transformer_impl not in _LAYER_SUFFIXES:
            raise PlanError(
                f"learner transformer_impl must be one of {sorted(_LAYER_SUFFIXES)}, got {self.transformer_impl!r}"
            )
        if m.num_layers < pp:
            raise PlanError(f"learner PP{pp} over {m.num_layers} layers: some stage would own no layers")
        if m.num_layers % pp:
            raise PlanError(
                f"learner PP{pp} does not divide num_layers={m.num_layers}: stages would own uneven "
                f"layer counts (valid PP sizes: {_divisors(m.num_layers)})"
            )
        if m.num_attention_heads % m.num_query_groups:
            raise PlanError(
                f"num_attention_heads={m.num_attention_heads} is not a multiple of "
                f"num_query_groups={m.num_query_groups}"
            )
        for label, value in (
            ("num_query_groups", m.num_query_groups),
            ("num_attention_heads", m.num_attention_heads),
            ("ffn_hidden_size", m.ffn_hidden_size),
            ("hidden_size", m.hidden_size),
        ):
            if value % tp:
                raise PlanError(f"learner TP{tp} does not divide {label}={value}")
        pv = self.vocab_padded
        if pv < m.vocab_size or pv % tp:
            raise PlanError(
                f"learner padded vocab {pv} must be >= vocab_size={m.vocab_size} and a multiple of TP{tp}"
            )


@dataclass(frozen=True)
class EngineLayout:
    """``num_engines`` vLLM engines, each tensor-parallel over ``tp`` ranks (PP = 1).

    ``model`` is the engine's own model config (the HF config it was started with); when given,
    the planner refuses a learner whose shapes differ. ``vocab_padding`` is vLLM's
    ``DEFAULT_VOCAB_PADDING_SIZE``.
    """

    tp: int
    num_engines: int = 1
    vocab_padding: int = VLLM_VOCAB_PADDING
    model: ModelConfig | None = field(default=None, hash=False, compare=True)
    weight_dtype: str = "auto"

    @property
    def world_size(self) -> int:
        return self.tp * self.num_engines

    @property
    def fp8(self) -> bool:
        return self.weight_dtype == "fp8_block"

    def validate(self, model: ModelConfig) -> None:
        n = self.tp
        if n < 1 or self.num_engines < 1:
            raise PlanError(
                f"engine tp and num_engines must be >= 1, got tp={n}, num_engines={self.num_engines}"
            )
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise PlanError(f"engine weight_dtype must be one of {WEIGHT_DTYPES}, got {self.weight_dtype!r}")
        if self.model is not None:
            diffs = [
                f"{key}: learner {getattr(model, key)} != engine {getattr(self.model, key)}"
                for key in _SHAPE_KEYS
                if getattr(model, key) != getattr(self.model, key)
            ]
            if diffs:
                raise PlanError("learner and engine model configs differ: " + "; ".join(diffs))
        g = model.num_query_groups
        for label, value in (
            ("num_attention_heads", model.num_attention_heads),
            ("ffn_hidden_size", model.ffn_hidden_size),
        ):
            if value % n:
                raise PlanError(f"engine TP{n} does not divide {label}={value} (vLLM shards it evenly)")
        if n % g and g % n:
            raise PlanError(
                f"engine TP{n} and num_query_groups={g}: vLLM needs one to divide the other "
                "(KV heads are split when TP <= groups, replicated when TP > groups)"
            )
        padded = vllm_padded_vocab(model.vocab_size, self.vocab_padding)
        if padded % n:
            raise PlanError(
                f"engine TP{n} does not divide vLLM's padded vocab {padded} "
                f"(vocab_size={model.vocab_size} padded to a multiple of {self.vocab_padding})"
            )


_SHAPE_KEYS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "vocab_size",
    "tie_word_embeddings",
)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def vllm_padded_vocab(vocab: int, padding: int = VLLM_VOCAB_PADDING) -> int:
    return -(-vocab // padding) * padding


# ----------------------------------------------------------------------------------- HF tensors
def hf_shape(model: ModelConfig, hf_name: str) -> tuple[int, ...]:
    return expected_hf_shape(hf_name, shapes_for(model, tp=1, padded_vocab=model.vocab_size))


def fp8_scale_box(box: Box, block: int = FP8_BLOCK) -> Box:
    """The ``weight_scale_inv`` blocks a block-aligned box of the weight covers (a ragged last block
    at the tensor's end counts as one block)."""
    return tuple((a // block, -(-b // block)) for a, b in box)


def wire_bytes(hf_name: str, box: Box, weight_dtype: str, dtype_bytes: int) -> int:
    """Bytes on the wire for ``box`` of ``hf_name``: ``dtype_bytes`` per element for an ``auto``
    engine; for ``fp8_block`` 1 byte per element plus 4 per covered scale block for the quantized
    GEMM weights and bf16 for the rest."""
    if weight_dtype != "fp8_block":
        return box_numel(box) * dtype_bytes
    if fp8_quantized(hf_name):
        return box_numel(box) + box_numel(fp8_scale_box(box)) * FP8_SCALE_BYTES
    return box_numel(box) * FP8_REST_BYTES


def check_fp8_alignment(learner: LearnerLayout, engine: EngineLayout, block: int = FP8_BLOCK) -> None:
    """Refuse an fp8_block refit where a learner shard or a vLLM shard boundary cuts a 128x128 block.

    The bridge quantizes each slice on the learner rank that holds it, so every block must lie
    within one learner piece (else no rank sees the whole block to take its amax) and within one
    vLLM rank's region (vLLM's own rule: each rank's partition of a block-quantized weight is a
    whole number of blocks; ``validate_fp8_block_shape``). A boundary at the tensor's end is fine.
    """
    model = learner.model
    table = params_by_hf_name(learner)
    for name in hf_tensor_names(model):
        if not fp8_quantized(name):
            continue
        shape = hf_shape(model, name)
        # a learner piece is a run the rank holds contiguously (in Megatron's interleaved QKV: one
        # query group's q, k or v rows), i.e. what one transfer quantizes
        sides = [
            (f"learner TP{learner.tp} rank {p.param.tp_rank}'s piece", p.hf_box)
            for p in learner_pieces(learner, name, table)
        ]
        sides += [
            (
                f"vLLM TP{engine.tp} rank {n}'s shard",
                vllm_region(model, name, n, engine.tp, engine.vocab_padding),
            )
            for n in range(engine.tp)
        ]
        for what, box in sides:
            for dim, (lo, hi) in enumerate(box):
                for edge in (lo, hi):
                    if edge % block and edge != shape[dim]:
                        label = "rows (output features)" if dim == 0 else "columns (input features)"
                        raise PlanError(
                            f"fp8_block refit: {name} {list(shape)}, dim {dim} ({label}): the {what} "
                            f"[{lo}, {hi}) has a boundary at {edge}, not a multiple of {block}, so it cuts "
                            f"a {block}x{block} FP8 block. Every shard of a block-quantized weight must be "
                            f"a whole number of {block}-blocks (no single rank would hold the block to "
                            "quantize it, and vLLM refuses such partitions): pick TP sizes that keep "
                            f"heads x head_dim, KV groups x head_dim and ffn_hidden_size per rank multiples "
                            f"of {block}, or use weight_dtype=auto"
                        )


def box_numel(box: Box) -> int:
    n = 1
    for a, b in box:
        n *= max(0, b - a)
    return n


def full_box(shape: tuple[int, ...]) -> Box:
    return tuple((0, d) for d in shape)


def intersect(a: Box, b: Box) -> Box | None:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return out if all(lo < hi for lo, hi in out) else None


# ------------------------------------------------------------------------------- learner side
@dataclass(frozen=True)
class MegatronParam:
    """A Megatron parameter on one model-parallel coordinate: chunk-local name, PP stage, TP rank."""

    name: str
    pp_stage: int
    tp_rank: int

    def rank(self, layout: LearnerLayout, dp_rank: int) -> int:
        return learner_global_rank(self.tp_rank, self.pp_stage, dp_rank, layout.tp, layout.dp)


@dataclass(frozen=True)
class LearnerPiece:
    """``param``'s local tensor holds HF box ``hf_box`` of ``hf_name`` at ``local_box`` (same extents)."""

    hf_name: str
    param: MegatronParam
    hf_box: Box
    local_box: Box


@dataclass(frozen=True)
class ParamInfo:
    """One chunk-local Megatron parameter name on one PP stage (the same on every TP rank)."""

    name: str
    pp_stage: int
    kind: str
    hf_names: tuple[str, ...]


def megatron_params(layout: LearnerLayout) -> list[ParamInfo]:
    """Every Megatron parameter (per PP stage, chunk-local names) that maps to HF tensors."""
    m = layout.model
    tied = m.tie_word_embeddings
    last = layout.pp - 1
    names: list[tuple[str, int, int | None]] = [("embedding.word_embeddings.weight", 0, None)]
    per_stage = layout.layers_per_stage
    for stage in range(layout.pp):
        for local in range(per_stage):
            for suffix in _LAYER_SUFFIXES[layout.transformer_impl]:
                names.append((f"decoder.layers.{local}.{suffix}", stage, stage * per_stage + local))
    names.append(("decoder.final_layernorm.weight", last, None))
    # With tied embeddings and PP=1 the output layer reuses the embedding parameter; with PP>1
    # the last stage keeps its own copy in output_layer.weight.
    if not tied or layout.pp > 1:
        names.append(("output_layer.weight", last, None))
    out = []
    for name, stage, layer in names:
        kind, hf = hf_sources(name, layer, tied)
        out.append(ParamInfo(name, stage, kind, tuple(hf)))
    return out


def params_by_hf_name(layout: LearnerLayout) -> dict[str, list[tuple[ParamInfo, int]]]:
    """HF name -> [(Megatron param, position of the HF tensor in its source list)]."""
    table: dict[str, list[tuple[ParamInfo, int]]] = {}
    for info in megatron_params(layout):
        for pos, hf_name in enumerate(info.hf_names):
            table.setdefault(hf_name, []).append((info, pos))
    return table


def _kind_pieces(
    kind: str, pos: int, shape: tuple[int, ...], s: Shapes, tp: int, r: int
) -> list[tuple[Box, Box]]:
    """(hf_box, local_box) pairs that TP rank ``r`` holds of source ``pos`` of a ``kind`` param."""
    if kind == REPL:
        box = full_box(shape)
        return [(box, box)]
    rows, cols = shape
    if kind == VOCAB:
        per = s.padded_vocab // tp
        lo, hi = min(r * per, s.vocab), min((r + 1) * per, s.vocab)
        return [(((lo, hi), (0, cols)), ((0, hi - lo), (0, cols)))] if lo < hi else []
    if kind == QKV:
        d, qpg = s.head_dim, s.q_per_group
        block = (qpg + 2) * d
        per = s.groups // tp
        out = []
        for j in range(per):
            g = r * per + j
            if pos == 0:
                hf_rows, off, n = (g * qpg * d, (g + 1) * qpg * d), 0, qpg * d
            else:
                hf_rows, off, n = (g * d, (g + 1) * d), (qpg + pos - 1) * d, d
            out.append(((hf_rows, (0, cols)), ((j * block + off, j * block + off + n), (0, cols))))
        return out
    if kind == FC1:
        per = rows // tp
        off = pos * per  # [gate_r; up_r]
        return [(((r * per, (r + 1) * per), (0, cols)), ((off, off + per), (0, cols)))]
    if kind == COL:
        per = rows // tp
        return [(((r * per, (r + 1) * per), (0, cols)), ((0, per), (0, cols)))]
    if kind == ROW:
        per = cols // tp
        return [(((0, rows), (r * per, (r + 1) * per)), ((0, rows), (0, per)))]
    raise ValueError(kind)


def learner_pieces(layout: LearnerLayout, hf_name: str, table=None) -> list[LearnerPiece]:
    """Every (param, PP stage, TP rank) piece of ``hf_name`` on the learner (one DP replica).

    Analytic per kind; equal to :func:`index_pieces` (tested). Pieces with equal ``hf_box`` are
    duplicates (replicated norms on every TP rank, tied embeddings on the first and last stage).
    """
    table = table if table is not None else params_by_hf_name(layout)
    if hf_name not in table:
        raise PlanError(f"no Megatron parameter holds HF tensor {hf_name!r}")
    s, shape = layout.shapes, hf_shape(layout.model, hf_name)
    out = []
    for info, pos in table[hf_name]:
        for r in range(layout.tp):
            param = MegatronParam(info.name, info.pp_stage, r)
            for hf_box, local_box in _kind_pieces(info.kind, pos, shape, s, layout.tp, r):
                out.append(LearnerPiece(hf_name, param, hf_box, local_box))
    return out


def megatron_local_shape(layout: LearnerLayout, info: ParamInfo) -> tuple[int, ...]:
    """Shape of ``info``'s rank-local tensor on any TP rank."""
    s, tp = layout.shapes, layout.tp
    shapes = [hf_shape(layout.model, n) for n in info.hf_names]
    if info.kind == REPL:
        return shapes[0]
    if info.kind == VOCAB:
        return (s.padded_vocab // tp, shapes[0][1])
    if info.kind in (QKV, FC1, COL):
        return (sum(sh[0] for sh in shapes) // tp, shapes[0][1])
    if info.kind == ROW:
        return (shapes[0][0], shapes[0][1] // tp)
    raise ValueError(info.kind)


def index_pieces(layout: LearnerLayout, hf_name: str) -> list[LearnerPiece]:
    """Like :func:`learner_pieces`, derived by pushing flat-index tensors through ``shard_from_hf``.

    Each source HF tensor is filled with ``1 + base + flat index`` (0 marks Megatron's vocab
    padding), sharded per TP rank, and the rank-local tensor is read back into maximal runs of
    rows whose HF rows and column ranges are contiguous. Materialises full HF-size index tensors:
    for small shapes (tests) only.
    """
    table = params_by_hf_name(layout)
    s = layout.shapes
    out = []
    for info, pos in table[hf_name]:
        shapes = [hf_shape(layout.model, n) for n in info.hf_names]
        bases, total = [], 0
        for sh in shapes:
            bases.append(total)
            total += box_numel(full_box(sh))
        idx = [
            torch.arange(b + 1, b + 1 + box_numel(full_box(sh)), dtype=torch.int64).reshape(sh)
            for b, sh in zip(bases, shapes)
        ]
        lo, hi = bases[pos] + 1, bases[pos] + 1 + box_numel(full_box(shapes[pos]))
        shape = shapes[pos]
        for r in range(layout.tp):
            param = MegatronParam(info.name, info.pp_stage, r)
            local = shard_from_hf(info.kind, idx, s, layout.tp, r)
            out += [LearnerPiece(hf_name, param, hb, lb) for hb, lb in _read_index(local, lo, hi, shape)]
    return out


def _read_index(local: torch.Tensor, lo: int, hi: int, shape: tuple[int, ...]) -> list[tuple[Box, Box]]:
    mask = (local >= lo) & (local < hi)
    if local.dim() == 1:
        if not bool(mask.any()):
            return []
        flat = local - lo
        if not bool(mask.all()) or not torch.equal(flat, torch.arange(shape[0])):
            raise AssertionError("1-D parameter is not a plain copy")
        return [(((0, shape[0]),), ((0, shape[0]),))]
    cols = shape[1]
    runs: list[list[int]] = []  # [local_row0, local_row1, hf_row0, col0, ncols, local_col0]
    for i in range(local.shape[0]):
        row_mask = mask[i]
        if not bool(row_mask.any()):
            continue
        where = row_mask.nonzero().flatten()
        c_lo, c_hi = int(where[0]), int(where[-1]) + 1
        if c_hi - c_lo != where.numel():
            raise AssertionError("non-contiguous columns in a local row")
        flat = local[i, c_lo:c_hi] - lo
        hf_row, hf_col = int(flat[0]) // cols, int(flat[0]) % cols
        n = c_hi - c_lo
        if not torch.equal(flat, torch.arange(int(flat[0]), int(flat[0]) + n)):
            raise AssertionError("local row is not a contiguous HF row segment")
        if runs:
            r0, r1, h0, *rest = runs[-1]
            if r1 == i and h0 + (i - r0) == hf_row and rest == [hf_col, n, c_lo]:
                runs[-1][1] = i + 1
                continue
        runs.append([i, i + 1, hf_row, hf_col, n, c_lo])
    return [(((h, h + (b - a)), (c, c + n)), ((a, b), (lc, lc + n))) for a, b, h, c, n, lc in runs]


# ---------------------------------------------------------------------------------- vLLM side
def vllm_region(
    model: ModelConfig, hf_name: str, rank: int, tp: int, vocab_padding: int = VLLM_VOCAB_PADDING
) -> Box:
    """The box of full HF tensor ``hf_name`` that vLLM TP rank ``rank`` of ``tp`` loads.

    Empty (zero-extent) boxes are possible for vocab rows: a rank whose padded vocab range starts
    past the real vocabulary receives nothing of that tensor.
    """
    shape = hf_shape(model, hf_name)
    suffix = hf_name.split(".", 3)[-1] if hf_name.startswith("model.layers.") else hf_name
    d, g = model.kv_channels, model.num_query_groups
    if len(shape) == 1:
        return full_box(shape)
    rows, cols = shape
    if suffix in ("model.embed_tokens.weight", "lm_head.weight"):
        per = vllm_padded_vocab(model.vocab_size, vocab_padding) // tp
        lo, hi = min(rank * per, model.vocab_size), min((rank + 1) * per, model.vocab_size)
        return ((lo, hi), (0, cols))
    if suffix in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
        if tp <= g:
            per = g // tp * d
            return ((rank * per, (rank + 1) * per), (0, cols))
        head = rank // (tp // g)  # vLLM: shard_rank = tp_rank // num_kv_head_replicas
        return ((head * d, (head + 1) * d), (0, cols))
    if suffix in ("self_attn.q_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"):
        per = rows // tp
        return ((rank * per, (rank + 1) * per), (0, cols))
    if suffix in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        per = cols // tp
        return ((0, rows), (rank * per, (rank + 1) * per))
    raise KeyError(f"no vLLM sharding rule for {hf_name!r}")
