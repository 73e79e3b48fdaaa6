"""Per-GPU memory estimates for RLVR learner and vLLM engine ranks (pure arithmetic).

**Learner rank** (Megatron-Core mixed precision, the layout TP x PP x DP, bf16 weights):

- weights: ``2 B x P_rank`` where ``P_rank`` is the parameters of the rank's PP stage divided
  over TP (embedding on the first stage, final norm + output layer on the last, norms replicated
  over TP, Megatron's padded vocabulary);
- gradients: ``4 B x P_rank`` (Megatron's DDP grad buffer in fp32, ``grad_reduce_in_fp32=True`` as
  :mod:`megatron_tulu.engine.model` builds it; ``grad_dtype="bf16"`` gives 2 B);
- fp32 main params + Adam m and v: ``12 B x P_rank``, divided by DP with the distributed optimizer
  (ZeRO-1 over DP); with ``params_dtype="fp32"`` (CPU runs) weights take 4 B and there is no
  main-param copy (Adam m, v: 8 B);
- activations, Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models", arXiv:2205.05198, §4) re-derived for Llama (RMSNorm, SwiGLU with ffn width ``f``, GQA with ``g`` KV heads
  of size ``d``, no dropout), bytes per layer per micro-batch of ``b`` sequences of ``s`` tokens
  in bf16 with TP ``t`` and ``a`` heads::

      outside the TP region (2 RMSNorm inputs, QKV and fc1 inputs):  8 s b h
      inside it (Q, K, V, attention out, fc1 out gate|up, SwiGLU out): s b (4h + 4gd + 6f)
      core attention (softmax output):                                 2 a s^2 b

  - no recompute: ``8sbh·[1/t with sequence parallel] + sb(4h+4gd+6f)/t + 2as²b/t``;
  - selective recompute (core attention recomputed, or flash attention): drop the ``s²`` term;
  - full recompute: ``2sbh/t`` per layer (its input; ``/t`` with sequence parallel) plus one
    layer's selective working set while it is recomputed.

  (For GPT, whose GeLU MLP keeps ``4f = 16h`` instead of SwiGLU's ``6f``, with ``gd = h`` and
  the dropout masks ``2sbh + a s² b`` and dropout output ``2 a s² b``, the same count gives
  Korthikanti's ``34 sbh + 5 a s² b``.) Under 1F1B the first stage keeps ``min(PP, micro-batches)``
  micro-batches in flight, stage ``i`` keeps ``min(PP - i, micro-batches)``, each of
  ``L / PP`` layers, so stage 0 holds about ``L`` layers' activations whatever PP is. The last
  stage adds the fp32 logits and their gradient, ``2 x 4 B x s b V / t``.
- value model: the same four terms for its own shapes (an 8B critic under the policy's TP / PP;
  ``ceil(L / PP)`` layers per stage when PP does not divide its layers), a scalar head instead of
  the LM head; its activations are not alive at the same time as the policy's, so the peak takes
  the larger of the two;
- reference policy: frozen bf16 weights only (forward under ``no_grad``).
- a fixed ``overhead_gb`` for the CUDA context, NCCL buffers and allocator slack.

**Engine rank** (vLLM, TP ``n``): weights ``2 B x P / n`` (the vocabulary padded to 64), and the
KV cache gets what ``gpu_memory_utilization x GPU memory`` leaves after the weights and an
activation / workspace reserve; a token costs ``2 (K, V) x L x max(1, g / n) x d x 2 B`` (KV heads
are replicated when ``n > g``). On top of vLLM's budget, the refit's receive buffers
(``rollout.refit_receive_buffer_mb``, the most an engine rank holds at once while it loads new
weights: vLLM's loaders cut each rank's shard out of full-size tensors, see
:mod:`megatron_tulu.rollout.bridge.schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.config.validate import pipeline_stage_layers
from megatron_tulu.dtypes import BYTES

__all__ = [
    "GB",
    "EngineMemory",
    "LearnerMemory",
    "ModelMemory",
    "RECOMPUTE_MODES",
    "activation_bytes_per_layer",
    "count_params",
    "estimate_engine_memory",
    "estimate_learner_memory",
    "format_memory_table",
    "stage_params",
]

GB = 1e9
RECOMPUTE_MODES = ("none", "selective", "full")


def _padded(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


def _layer_params(m: ModelConfig) -> tuple[int, int]:
    """(TP-sharded, TP-replicated) parameters of one decoder layer."""
    h, d = m.hidden_size, m.kv_channels
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    sharded = h * (q + 2 * kv) + q * h + 3 * h * m.ffn_hidden_size
    return sharded, 2 * h


def count_params(m: ModelConfig, tp: int = 1, vocab: int | None = None) -> int:
    """Parameters of the whole model on one of ``tp`` tensor-parallel ranks (norms replicated), with
    ``vocab`` embedding / output rows (default: the unpadded vocabulary; one matrix when tied).
    ``count_params(m)`` is the model's parameter count."""
    sharded, repl = _layer_params(m)
    rows = m.vocab_size if vocab is None else vocab
    emb = rows * m.hidden_size // tp * (1 if m.tie_word_embeddings else 2)
    return m.num_layers * (sharded // tp + repl) + emb + m.hidden_size


def _layers_on_stage(num_layers: int, pp: int, stage: int) -> int:
    """Layers on ``stage`` as Megatron-Core builds them (uneven: first/last stages take the rest)."""
    return pipeline_stage_layers(num_layers, pp)[stage]


def stage_params(m: ModelConfig, tp: int, pp: int, stage: int, value_head: bool = False) -> int:
    """Parameters one TP rank of PP ``stage`` holds (Megatron vocab padding; a scalar head for a
    value model instead of the LM head)."""
    sharded, repl = _layer_params(m)
    n = _layers_on_stage(m.num_layers, pp, stage) * (sharded // tp + repl)
    vocab = _padded(m.vocab_size, m.make_vocab_size_divisible_by * tp)
    if stage == 0:
        n += vocab * m.hidden_size // tp
    if stage == pp - 1:
        n += m.hidden_size  # final norm
        if value_head:
            n += m.hidden_size + 1
        elif not m.tie_word_embeddings or pp > 1:
            n += vocab * m.hidden_size // tp
    return n


def activation_bytes_per_layer(
    m: ModelConfig,
    seq_len: int,
    micro_batch: int,
    tp: int,
    sequence_parallel: bool = True,
    recompute: str = "selective",
) -> float:
    """Bytes one decoder layer keeps for backward for one micro-batch (see the module docstring)."""
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    s, b, h, f = seq_len, micro_batch, m.hidden_size, m.ffn_hidden_size
    gd, a = m.num_query_groups * m.kv_channels, m.num_attention_heads
    outside = 8 * s * b * h / (tp if sequence_parallel else 1)
    if recompute == "full":
        return 2 * s * b * h / (tp if sequence_parallel else 1)
    inside = s * b * (4 * h + 4 * gd + 6 * f) / tp
    core = 0.0 if recompute == "selective" else 2 * a * s * s * b / tp
    return outside + inside + core


@dataclass(frozen=True)
class ModelMemory:
    """Bytes on one GPU for one model (worst PP stage)."""

    name: str
    stage: int
    params: int
    weights: float
    grads: float = 0.0
    optimizer: float = 0.0  # fp32 main params + Adam m, v (sharded over DP when distributed)
    activations: float = 0.0

    @property
    def states(self) -> float:
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> float:
        return self.states + self.activations


@dataclass(frozen=True)
class LearnerMemory:
    tp: int
    pp: int
    dp: int
    seq_len: int
    micro_batch: int
    recompute: str
    params_dtype: str
    stage: int  # the PP stage with the largest total
    policy: ModelMemory
    reference: ModelMemory | None
    value: ModelMemory | None
    overhead: float
    per_stage_total: tuple[float, ...] = field(default=())

    @property
    def activations(self) -> float:
        """Peak activations: policy and value train one after the other."""
        return max(self.policy.activations, self.value.activations if self.value else 0.0)

    @property
    def total(self) -> float:
        states = self.policy.states + (self.value.states if self.value else 0.0)
        states += self.reference.states if self.reference else 0.0
        return states + self.activations + self.overhead


@dataclass(frozen=True)
class EngineMemory:
    tp: int
    gpu_memory: float
    gpu_memory_utilization: float
    weights: float
    reserve: float  # activations, sampler and workspace kept out of the KV cache
    kv_cache: float
    kv_bytes_per_token: float
    seq_len: int
    refit_buffers: float = 0.0  # the refit's receive buffers, outside gpu_memory_utilization

    @property
    def total(self) -> float:
        return self.weights + self.reserve + max(self.kv_cache, 0.0) + self.refit_buffers

    @property
    def max_tokens(self) -> int:
        return max(0, int(self.kv_cache // self.kv_bytes_per_token))

    @property
    def max_sequences(self) -> int:
        return self.max_tokens // max(1, self.seq_len)


def _model_memory(
    m: ModelConfig,
    name: str,
    tp: int,
    pp: int,
    dp: int,
    stage: int,
    *,
    train: bool,
    seq_len: int,
    micro_batch: int,
    num_microbatches: int,
    sequence_parallel: bool,
    recompute: str,
    grad_bytes: int,
    distributed_optimizer: bool,
    weight_bytes: int = 2,
    value_head: bool = False,
) -> ModelMemory:
    params = stage_params(m, tp, pp, stage, value_head=value_head)
    weights = float(weight_bytes * params)
    if not train:
        return ModelMemory(name, stage, params, weights)
    grads = float(max(grad_bytes, weight_bytes) * params)
    # Adam m, v in fp32, plus fp32 main params when the weights are 16-bit
    opt_bytes = 8 if weight_bytes == 4 else 12
    optimizer = float(opt_bytes * params) / (dp if distributed_optimizer else 1)
    in_flight = min(pp - stage, max(1, num_microbatches))
    layers = _layers_on_stage(m.num_layers, pp, stage)
    per_layer = activation_bytes_per_layer(m, seq_len, micro_batch, tp, sequence_parallel, recompute)
    act = in_flight * layers * per_layer
    if recompute == "full":  # one layer re-materialised at a time
        act += activation_bytes_per_layer(m, seq_len, micro_batch, tp, sequence_parallel, "selective")
    if stage == pp - 1:
        out = 1 if value_head else _padded(m.vocab_size, m.make_vocab_size_divisible_by * tp) // tp
        act += 2 * 4.0 * seq_len * micro_batch * out
    return ModelMemory(name, stage, params, weights, grads, optimizer, act)


def estimate_learner_memory(
    model: ModelConfig,
    tp: int,
    pp: int,
    dp: int,
    *,
    seq_len: int,
    micro_batch: int = 1,
    num_microbatches: int | None = None,
    sequence_parallel: bool = True,
    recompute: str = "selective",
    grad_dtype: str = "fp32",
    params_dtype: str = "bf16",
    distributed_optimizer: bool = True,
    value_model: ModelConfig | None = None,
    reference: bool = True,
    overhead_gb: float = 3.0,
) -> LearnerMemory:
    """Peak bytes on the worst learner GPU (policy + optional value model and reference)."""
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    if min(tp, pp, dp, seq_len, micro_batch) < 1:
        raise ValueError("tp, pp, dp, seq_len and micro_batch must be >= 1")
    kw = dict(
        seq_len=seq_len,
        micro_batch=micro_batch,
        num_microbatches=num_microbatches if num_microbatches is not None else pp,
        sequence_parallel=sequence_parallel and tp > 1,
        recompute=recompute,
        grad_bytes=BYTES[grad_dtype],
        distributed_optimizer=distributed_optimizer,
        weight_bytes=BYTES[params_dtype],
    )
    best: LearnerMemory | None = None
    totals = []
    for stage in range(pp):
        policy = _model_memory(model, "policy", tp, pp, dp, stage, train=True, **kw)
        ref = _model_memory(model, "reference", tp, pp, dp, stage, train=False, **kw) if reference else None
        value = (
            _model_memory(value_model, "value", tp, pp, dp, stage, train=True, value_head=True, **kw)
            if value_model is not None
            else None
        )
        est = LearnerMemory(
            tp,
            pp,
            dp,
            seq_len,
            micro_batch,
            recompute,
            params_dtype,
            stage,
            policy,
            ref,
            value,
            overhead_gb * GB,
        )
        totals.append(est.total)
        if best is None or est.total > best.total:
            best = est
    assert best is not None
    return LearnerMemory(**{**best.__dict__, "per_stage_total": tuple(totals)})


def estimate_engine_memory(
    model: ModelConfig,
    engine_tp: int,
    *,
    seq_len: int,
    gpu_memory_gb: float = 80.0,
    gpu_memory_utilization: float = 0.9,
    reserve_gb: float = 2.0,
    refit_receive_buffer_mb: float = 0.0,
) -> EngineMemory:
    """vLLM rank: weights / TP and the KV-cache budget left under ``gpu_memory_utilization``, plus
    the refit's receive buffers (``rollout.refit_receive_buffer_mb``, MiB) outside that budget."""
    m = model
    weights = 2.0 * count_params(m, engine_tp, vocab=_padded(m.vocab_size, 64))
    kv_heads = max(1, m.num_query_groups // engine_tp)
    per_token = 2 * m.num_layers * kv_heads * m.kv_channels * 2.0
    budget = gpu_memory_utilization * gpu_memory_gb * GB
    kv = budget - weights - reserve_gb * GB
    return EngineMemory(
        engine_tp,
        gpu_memory_gb * GB,
        gpu_memory_utilization,
        weights,
        reserve_gb * GB,
        kv,
        per_token,
        seq_len,
        refit_receive_buffer_mb * 2**20,
    )


def _gb(x: float) -> str:
    return f"{x / GB:8.2f}"


def format_memory_table(
    learner: LearnerMemory,
    engine: EngineMemory | None = None,
    limit_gb: float | None = 80.0,
    alternatives: dict[str, LearnerMemory] | None = None,
) -> str:
    """A GB table of the learner rank (and the engine rank), with a fit verdict against ``limit_gb``."""
    rows: list[tuple[str, float]] = []
    p, v, r = learner.policy, learner.value, learner.reference
    dt = learner.params_dtype
    opt = "Adam m,v" if dt == "fp32" else "fp32 main params + Adam m,v"
    rows.append((f"policy weights {dt} ({p.params / 1e9:.2f} B params)", p.weights))
    rows.append(("policy grads (fp32 grad buffer)" if p.grads >= 4 * p.params else "policy grads", p.grads))
    rows.append((f"policy {opt} (/DP{learner.dp})", p.optimizer))
    if r is not None:
        rows.append((f"reference weights {dt} (frozen)", r.weights))
    if v is not None:
        rows.append((f"value weights {dt} ({v.params / 1e9:.2f} B params)", v.weights))
        rows.append(("value grads", v.grads))
        rows.append((f"value {opt} (/DP{learner.dp})", v.optimizer))
    rows.append((f"policy activations (recompute={learner.recompute})", p.activations))
    if v is not None:
        rows.append((f"value activations (recompute={learner.recompute})", v.activations))
        rows.append(("  peak activations (max of the two)", learner.activations))
    rows.append(("CUDA context / NCCL / allocator slack", learner.overhead))
    head = (
        f"learner rank, worst PP stage {learner.stage} of {learner.pp} (TP{learner.tp} x PP{learner.pp} x "
        f"DP{learner.dp}, micro-batch {learner.micro_batch} x {learner.seq_len} tokens)"
    )
    width = max(len(k) for k, _ in rows) + 2
    lines = [head, f"  {'':{width}}{'GB':>8}"]
    lines += [f"  {k:{width}}{_gb(val)}" for k, val in rows]
    lines.append(f"  {'TOTAL':{width}}{_gb(learner.total)}" + _verdict(learner.total, limit_gb))
    if learner.per_stage_total:
        lines.append("  per PP stage total: " + " ".join(f"{t / GB:.1f}" for t in learner.per_stage_total))
    for label, alt in (alternatives or {}).items():
        lines.append(f"  {label:{width - 2}}  {_gb(alt.total)}" + _verdict(alt.total, limit_gb))
    if engine is not None:
        lines += [
            "",
            f"vLLM engine rank (TP{engine.tp}, gpu_memory_utilization {engine.gpu_memory_utilization:g} of "
            f"{engine.gpu_memory / GB:g} GB)",
            f"  {'weights bf16 / TP':{width}}{_gb(engine.weights)}",
            f"  {'activation / workspace reserve':{width}}{_gb(engine.reserve)}",
            f"  {'KV cache':{width}}{_gb(engine.kv_cache)}",
            *(
                [f"  {'refit receive buffers (outside vLLM)':{width}}{_gb(engine.refit_buffers)}"]
                if engine.refit_buffers
                else []
            ),
            f"  {'TOTAL':{width}}{_gb(engine.total)}" + _verdict(engine.total, limit_gb),
            f"  KV cache: {engine.kv_bytes_per_token / 1e3:.1f} KB per token -> {engine.max_tokens:,} tokens, "
            f"{engine.max_sequences:,} sequences of {engine.seq_len} tokens at once",
        ]
        if engine.kv_cache <= 0:
            lines.append("  NO KV-CACHE ROOM: raise engine TP or rollout.gpu_memory_utilization")
    return "\n".join(lines)


def _verdict(total: float, limit_gb: float | None) -> str:
    if not limit_gb:
        return ""
    ok = total <= limit_gb * GB
    return f"   {'fits' if ok else 'DOES NOT FIT'} in {limit_gb:g} GB"
