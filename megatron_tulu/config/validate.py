"""Layout checks that run before any process group exists, and the learner rank order they imply.

Every message says what to change, because users meet these errors at job launch on Slurm.
"""

from __future__ import annotations

from megatron_tulu.config.schema import ModelConfig, ParallelConfig

# Megatron-Core 0.16.1 hard-codes these in RotaryEmbedding._apply_scaling.
MEGATRON_ROPE_LOW_FREQ = 1.0
MEGATRON_ROPE_HIGH_FREQ = 4.0
MEGATRON_ROPE_ORIGINAL_CONTEXT = 8192


class LayoutError(ValueError):
    """A parallel layout or model shape that cannot run."""


def validate_model(model: ModelConfig) -> None:
    problems = []
    if model.num_attention_heads % model.num_query_groups:
        problems.append(
            f"num_attention_heads={model.num_attention_heads} is not a multiple of "
            f"num_query_groups={model.num_query_groups}"
        )
    if model.rope_scaling and (
        model.rope_low_freq_factor != MEGATRON_ROPE_LOW_FREQ
        or model.rope_high_freq_factor != MEGATRON_ROPE_HIGH_FREQ
        or model.rope_original_max_position_embeddings != MEGATRON_ROPE_ORIGINAL_CONTEXT
    ):
        problems.append(
            "Llama 3.1 RoPE scaling in Megatron-Core supports only low_freq_factor=1, "
            "high_freq_factor=4, original_max_position_embeddings=8192; got "
            f"{model.rope_low_freq_factor}, {model.rope_high_freq_factor}, "
            f"{model.rope_original_max_position_embeddings}"
        )
    if problems:
        raise LayoutError(f"model '{model.name}': " + "; ".join(problems))


def resolve_data_parallel(parallel: ParallelConfig, world_size: int) -> int:
    """Return DP for ``world_size``; raise if the layout cannot tile the world."""
    model_parallel = parallel.tp * parallel.pp * parallel.cp
    if world_size % model_parallel:
        raise LayoutError(
            f"world size {world_size} is not divisible by tp*pp*cp = "
            f"{parallel.tp}*{parallel.pp}*{parallel.cp} = {model_parallel}; launch a multiple of "
            f"{model_parallel} processes or change parallel.tp / parallel.pp / parallel.cp"
        )
    dp = world_size // model_parallel
    if parallel.dp not in (-1, dp):
        raise LayoutError(
            f"parallel.dp={parallel.dp} but world size {world_size} / (tp*pp*cp={model_parallel}) "
            f"gives dp={dp}; set parallel.dp=-1 to derive it or launch "
            f"{parallel.dp * model_parallel} processes"
        )
    return dp


def pipeline_stage_layers(num_layers: int, pp: int, vpp: int | None = None) -> list[int]:
    """Decoder layers on each pipeline stage, as Megatron-Core builds them.

    Equal stages when ``pp`` (x ``vpp``) divides ``num_layers``. Otherwise Megatron-Core's uneven
    split: the middle stages hold ``num_layers // pp`` layers each and the first and last stages
    share the rest (``num_layers_in_first_pipeline_stage`` / ``..._last_...``), e.g. an 8B value
    model's 32 layers at PP14 are 4 + 12 x 2 + 4. Raises :class:`LayoutError` where no such split
    exists (interleaved schedules, fewer layers than middle stages)."""
    stages = pp * (vpp or 1)
    if num_layers % stages == 0:
        return [num_layers // pp] * pp
    if vpp is not None:
        raise LayoutError(
            f"num_layers={num_layers} is not divisible by pp*vpp={stages}; interleaved pipelines need "
            f"equal stages: pick pp (and vpp) dividing {num_layers}"
        )
    middle = num_layers // pp if pp > 2 else 0
    rest = num_layers - middle * (pp - 2)
    first = rest // 2
    if (pp > 2 and middle < 1) or first < 1:
        raise LayoutError(f"num_layers={num_layers} cannot fill pp={pp} pipeline stages")
    return [first] + [middle] * (pp - 2) + [rest - first]


def uneven_stage_overrides(num_layers: int, pp: int, vpp: int | None = None) -> dict[str, int]:
    """``TransformerConfig`` fields for :func:`pipeline_stage_layers`' split ({} when even)."""
    layers = pipeline_stage_layers(num_layers, pp, vpp)
    if len(set(layers)) == 1:
        return {}
    return {"num_layers_in_first_pipeline_stage": layers[0], "num_layers_in_last_pipeline_stage": layers[-1]}


def learner_global_rank(tp_rank: int, pp_rank: int, dp_rank: int, tp: int, dp: int) -> int:
    """Rank of a learner within the learner ranks: the one place that encodes Megatron's rank order.

    Megatron-Core's default order ``"tp-cp-ep-dp-pp"`` (fastest-varying first) with cp = ep = 1:
    ``rank = tp_rank + tp * (dp_rank + dp * pp_rank)``.
    """
    return tp_rank + tp * (dp_rank + dp * pp_rank)


def learner_coords(rank: int, tp: int, dp: int) -> tuple[int, int, int]:
    """Inverse of :func:`learner_global_rank`: ``(tp_rank, pp_rank, dp_rank)``."""
    rest, tp_rank = divmod(rank, tp)
    pp_rank, dp_rank = divmod(rest, dp)
    return tp_rank, pp_rank, dp_rank


def validate_layout(
    model: ModelConfig, parallel: ParallelConfig, world_size: int, *, uneven_stages: bool = False
) -> int:
    """Check ``parallel`` against ``model`` and ``world_size``; returns the data-parallel size.

    ``uneven_stages`` accepts a layer count the pipeline does not divide, split as
    :func:`pipeline_stage_layers` says (the value model; the policy keeps equal stages, which the
    refit planner assumes)."""
    validate_model(model)
    for name in ("tp", "pp", "cp", "ep"):
        if getattr(parallel, name) < 1:
            raise LayoutError(f"parallel.{name} must be >= 1, got {getattr(parallel, name)}")
    problems = []
    if model.num_attention_heads % parallel.tp:
        problems.append(
            f"num_attention_heads={model.num_attention_heads} is not divisible by parallel.tp="
            f"{parallel.tp}; use a tp that divides {model.num_attention_heads}"
        )
    if model.num_query_groups % parallel.tp:
        problems.append(
            f"num_query_groups={model.num_query_groups} is not divisible by parallel.tp={parallel.tp}"
            f"; Megatron shards KV groups over TP, so tp must divide {model.num_query_groups}"
        )
    if model.ffn_hidden_size % parallel.tp:
        problems.append(f"ffn_hidden_size={model.ffn_hidden_size} is not divisible by tp={parallel.tp}")
    stages = parallel.pp * (parallel.vpp or 1)
    if uneven_stages:
        try:
            pipeline_stage_layers(model.num_layers, parallel.pp, parallel.vpp)
        except LayoutError as exc:
            problems.append(str(exc))
    elif model.num_layers % stages:
        problems.append(
            f"num_layers={model.num_layers} is not divisible by pp*vpp={stages}; pick pp (and vpp) "
            f"dividing {model.num_layers}"
        )
    if parallel.vpp is not None and parallel.pp < 2:
        problems.append("parallel.vpp (interleaved pipeline) needs parallel.pp >= 2")
    if parallel.sequence_parallel and parallel.tp < 2:
        problems.append("parallel.sequence_parallel=true needs parallel.tp >= 2")
    if parallel.ep != 1:
        problems.append("parallel.ep > 1 needs a mixture-of-experts model; Llama presets are dense")
    if parallel.cp > 1 and (2 * parallel.cp) and model.max_position_embeddings % (2 * parallel.cp):
        problems.append(f"context parallel cp={parallel.cp} needs sequences divisible by 2*cp")
    if problems:
        raise LayoutError(
            f"layout tp={parallel.tp} pp={parallel.pp} cp={parallel.cp} vpp={parallel.vpp} "
            f"cannot run model '{model.name}':\n  - " + "\n  - ".join(problems)
        )
    return resolve_data_parallel(parallel, world_size)
