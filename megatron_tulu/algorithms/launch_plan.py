"""The launch plan of an RLVR run: the checks the dry run and the real run share.

``examples/rlvr_405b.py --dry-run`` (no GPU, no process group; :mod:`megatron_tulu.algorithms.dry_run`
prints the report) and ``RLTrainer.setup`` (every learner rank, before a model loads) call the same
functions here, so a layout the dry run accepts is not refused at setup, and the other way round:

- :func:`check_rl_plan`: the RL config (``check_rl_config``) and the step's batch over the learners'
  DP ranks, micro-batches and mini-batches (:func:`check_rl_batch`);
- :func:`locate_value_model`: where the value model loads from: a local HF directory, or a Hub id
  whose snapshot is in the local Hugging Face cache; with ``HF_HUB_OFFLINE`` set nothing else can
  load, so nothing else passes (the sbatch sets it on every node);
- :func:`plan_memory`: the per-GPU memory plan over :mod:`megatron_tulu.algorithms.memory`'s
  estimates; :func:`engine_memory_plan` is the one place the engine estimate is made;
- :func:`plan_time`: the run's wall time against the Slurm time limit: steps, hours, allocations
  and requeues.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from megatron_tulu.algorithms.memory import (
    GB,
    RECOMPUTE_MODES,
    EngineMemory,
    LearnerMemory,
    estimate_engine_memory,
    estimate_learner_memory,
)
from megatron_tulu.algorithms.roles import check_rollout_batch
from megatron_tulu.config.schema import ModelConfig, RLVRRunConfig
from megatron_tulu.config.validate import LayoutError

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "MemoryPlan",
    "TimePlan",
    "ValueSource",
    "check_rl_batch",
    "check_rl_plan",
    "engine_memory_plan",
    "format_duration",
    "hub_offline",
    "job_signal_lead",
    "job_time_limit",
    "locate_value_model",
    "parse_signal_lead",
    "parse_slurm_time",
    "plan_memory",
    "plan_time",
    "prepare_value_model",
    "sbatch_option",
    "total_rl_steps",
]

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "examples" / "slurm" / "rlvr.sbatch"
DEFAULT_TIME_LIMIT = "48:00:00"  # the shipped sbatch's --time, when its file is not at hand


# ------------------------------------------------------------------------------------------ batch
def total_rl_steps(cfg: RLVRRunConfig) -> int:
    """RL steps of the run: ``rlvr.total_episodes`` over the rollouts of one step, capped by
    ``train.train_iters`` when that is set."""
    per_step = cfg.rlvr.prompts_per_step * cfg.rollout.samples_per_prompt
    steps = max(1, cfg.rlvr.total_episodes // per_step)
    return min(steps, cfg.train.train_iters) if cfg.train.train_iters > 0 else steps


def check_rl_batch(cfg: RLVRRunConfig, dp: int) -> int:
    """A step's rollouts over ``dp`` learner replicas: whole micro-batches, whole mini-batches and
    whole groups of samples per replica. Returns the micro-batches per DP rank per step."""
    rl, mbs = cfg.rlvr, cfg.train.micro_batch_size
    rollouts = rl.prompts_per_step * cfg.rollout.samples_per_prompt
    micro = check_rollout_batch(rollouts, dp, mbs)
    if micro % rl.num_mini_batches:
        raise LayoutError(
            f"{rollouts} rollouts per step (rlvr.prompts_per_step x rollout.samples_per_prompt) must divide by "
            f"DP x train.micro_batch_size x rlvr.num_mini_batches = {dp} x {mbs} x {rl.num_mini_batches}; "
            "change rlvr.num_mini_batches or the batch"
        )
    if rl.prompts_per_step % dp:
        # a DP rank's share must hold whole groups of samples (GRPO's advantages, group masks)
        raise LayoutError(
            f"rlvr.prompts_per_step={rl.prompts_per_step} must divide by the data-parallel size {dp}, so that "
            "each learner replica trains on whole groups of samples"
        )
    return micro


def check_rl_plan(cfg: RLVRRunConfig, dp: int) -> int:
    """Every config check of an RLVR launch that needs no model: ``check_rl_config`` and
    :func:`check_rl_batch`. Returns the micro-batches per DP rank per step."""
    from megatron_tulu.config.validate_rl import check_rl_config
    from megatron_tulu.rewards.gsm8k import RULES

    check_rl_config(cfg, RULES)
    return check_rl_batch(cfg, dp)


# ------------------------------------------------------------------------------------ value model
_TRUE = {"1", "true", "yes", "on"}


def hub_offline(env: Mapping[str, str] | None = None) -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (the sbatch sets it on every node)."""
    env = os.environ if env is None else env
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@dataclass(frozen=True)
class ValueSource:
    """Where the value model's weights come from. ``kind``: ``policy`` (no ``rlvr.value_model``:
    the policy with a fresh head), ``local`` (a directory), ``cache`` (a Hub id whose snapshot is in
    the local Hugging Face cache) or ``hub`` (a Hub id setup downloads; online only)."""

    spec: str | None
    kind: str
    path: str | None = None

    def describe(self) -> str:
        return {
            "policy": "none given: initialised from the policy with a fresh scalar head",
            "local": f"{self.path}",
            "cache": f"{self.spec} from the local Hugging Face cache ({self.path})",
            "hub": f"{self.spec}: a Hub id not in the local cache; setup downloads it (HF_HUB_OFFLINE is unset)",
        }[self.kind]


def _cached_snapshot(repo_id: str, cache_dir: str | os.PathLike | None) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, HFValidationError):
        return None
    return path if (Path(path) / "config.json").is_file() else None


def locate_value_model(
    spec: str | None, env: Mapping[str, str] | None = None, cache_dir: str | os.PathLike | None = None
) -> ValueSource:
    """Where ``rlvr.value_model`` loads from; raises :class:`LayoutError` (one line) for a source
    that cannot load here: a directory without ``config.json``, or with ``HF_HUB_OFFLINE`` set, a
    name that is neither a local directory nor in the local Hugging Face cache (``cache_dir``:
    huggingface_hub's default when None)."""
    if not spec:
        return ValueSource(None, "policy")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LayoutError(
                f"rlvr.value_model={spec}: no config.json there; point it at a local HF reward-model directory"
            )
        return ValueSource(spec, "local", str(path))
    if spec.startswith(("/", ".", "~")):
        raise LayoutError(
            f"rlvr.value_model={spec}: no such directory; point it at a local HF reward-model directory"
        )
    cached = _cached_snapshot(spec, cache_dir)
    if cached is not None:
        return ValueSource(spec, "cache", cached)
    if hub_offline(env):
        raise LayoutError(
            f"rlvr.value_model={spec} is neither a local directory nor in the local Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set, so nothing can be downloaded: download it first (`hf download {spec} "
            "--local-dir DIR` where the nodes can read DIR) and set rlvr.value_model=DIR"
        )
    return ValueSource(spec, "hub")


def prepare_value_model(spec: str | None) -> str | None:
    """The local directory the run loads the value model from (``RLTrainer.setup``, every learner
    rank, before any model loads): :func:`locate_value_model`'s answer, a Hub id fetched into the
    cache when online (huggingface_hub's file locks let ranks that share a cache fetch it once)."""
    source = locate_value_model(spec)
    if source.kind != "hub":
        return source.path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        # config.json and the safetensors weights are all the value model reads (hf_io, value_model.py)
        return snapshot_download(
            spec, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"]
        )
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError) as exc:
        raise LayoutError(
            f"rlvr.value_model={spec}: not a local directory, and downloading it from the Hub failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); set rlvr.value_model to a "
            "local HF reward-model directory"
        ) from exc


# ----------------------------------------------------------------------------------------- memory
def engine_memory_plan(cfg: RLVRRunConfig, gpu_memory_gb: float) -> EngineMemory:
    """A vLLM engine rank's memory (weights, workspace, KV cache): the one estimate of it that both
    the dry run and setup use."""
    r = cfg.rollout
    return estimate_engine_memory(
        cfg.model,
        r.engine_tp,
        seq_len=r.max_prompt_len + r.max_new_tokens,
        gpu_memory_gb=gpu_memory_gb,
        gpu_memory_utilization=r.gpu_memory_utilization,
        refit_receive_buffer_mb=r.refit_receive_buffer_mb,  # refit buffers, outside vLLM's budget
    )


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of the learner ranks (at each recompute mode) and of an engine rank."""

    by_mode: dict[str, LearnerMemory]
    recompute: str  # the mode the run uses
    engine: EngineMemory
    colocated: bool  # an engine shares a learner rank's GPU
    problems: list[str] = field(default_factory=list)

    @property
    def learner(self) -> LearnerMemory:
        return self.by_mode[self.recompute]

    @property
    def learner_rank_total(self) -> float:
        """Bytes on the fullest learner GPU (its engine's too when colocated)."""
        return self.learner.total + (self.engine.total if self.colocated else 0.0)


def plan_memory(
    cfg: RLVRRunConfig,
    tp: int,
    pp: int,
    dp: int,
    value: ModelConfig | None,
    *,
    gpu_memory_gb: float,
    limit_gb: float | None,
    recompute: str | None = None,
    grad_dtype: str = "fp32",
) -> MemoryPlan:
    """The memory plan of a learner layout TP x PP x DP with ``value`` as the value model (None:
    none). ``recompute``: a mode, ``auto`` (the least that fits ``limit_gb``) or None
    (``parallel.recompute``, what the run uses). ``limit_gb`` falsy: no fit check."""
    r, o = cfg.rollout, cfg.rlvr
    seq = r.max_prompt_len + r.max_new_tokens
    micro = (o.prompts_per_step * r.samples_per_prompt) // (dp * cfg.train.micro_batch_size)
    engine = engine_memory_plan(cfg, gpu_memory_gb)
    colocated = r.placement == "colocated"
    extra = engine.total if colocated else 0.0
    by_mode = {
        mode: estimate_learner_memory(
            cfg.model,
            tp,
            pp,
            dp,
            seq_len=seq,
            micro_batch=cfg.train.micro_batch_size,
            num_microbatches=max(1, micro // max(1, o.num_mini_batches)),
            sequence_parallel=cfg.parallel.sequence_parallel,
            recompute=mode,
            grad_dtype=grad_dtype,
            params_dtype=cfg.precision.params_dtype,
            # a plan for GPUs: unset means the GPU default (the DistributedOptimizer)
            distributed_optimizer=cfg.parallel.use_distributed_optimizer is not False,
            value_model=value,
        )
        for mode in RECOMPUTE_MODES
    }
    if recompute == "auto":
        fitting = [m for m, est in by_mode.items() if not limit_gb or est.total + extra <= limit_gb * GB]
        mode = fitting[0] if fitting else "full"
    else:
        mode = recompute or cfg.parallel.recompute
    if mode not in by_mode:
        raise LayoutError(f"parallel.recompute must be one of {list(RECOMPUTE_MODES)}, got {mode!r}")
    plan = MemoryPlan(by_mode, mode, engine, colocated)
    total = plan.learner_rank_total
    if limit_gb and total > limit_gb * GB:
        plan.problems.append(
            f"a learner rank needs {total / GB:.1f} GB (recompute={mode}) > {limit_gb:g} GB; set "
            "parallel.recompute=full, raise parallel.pp or parallel.tp, lower train.micro_batch_size / sequence "
            "lengths, or use more nodes (rlvr.memory_limit_gb=0 or the dry run's --memory-limit-gb 0 skips this check)"
        )
    if engine.kv_cache <= 0 or engine.max_sequences < 1:
        plan.problems.append(
            f"a TP{r.engine_tp} engine has no room for one {seq}-token sequence in its KV cache; raise "
            "rollout.engine_tp or rollout.gpu_memory_utilization"
        )
    if limit_gb and not colocated and engine.total > limit_gb * GB:
        plan.problems.append(f"an engine rank needs {engine.total / GB:.1f} GB > {limit_gb:g} GB")
    return plan


# ------------------------------------------------------------------------------------------- time
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_slurm_time(text: str) -> float | None:
    """Seconds in a Slurm time limit (``--time``): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``; None for ``UNLIMITED`` / ``INFINITE``. Raises ValueError on anything else."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _SLURM_TIME.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a Slurm time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        return ((int(days) * 24 + int(a)) * 60 + int(b or 0)) * 60.0 + int(c or 0)
    if c is not None:  # H:M:S
        return (int(a) * 60 + int(b)) * 60.0 + int(c)
    if b is not None:  # M:S
        return int(a) * 60.0 + int(b)
    return int(a) * 60.0  # M


def parse_signal_lead(text: str) -> float:
    """Seconds before the time limit at which Slurm sends the warning signal: ``--signal``'s
    ``[{R|B}:]SIG[@TIME]`` (Slurm's default TIME is 60 s)."""
    m = re.fullmatch(r"(?:[RB]+:)?\w+(?:@(\d+))?", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Slurm --signal value ([B:]SIG[@SECONDS])")
    return float(m.group(1) or 60)


def sbatch_option(name: str, sbatch: Path = SBATCH) -> str | None:
    """The value of ``#SBATCH --<name>=...`` in the shipped sbatch (None: absent)."""
    try:
        found = re.search(rf"^#SBATCH\s+--{re.escape(name)}[= ](\S+)", sbatch.read_text(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1) if found else None


def _sbatch_name(sbatch: Path) -> str:
    try:
        return str(sbatch.relative_to(REPO))
    except ValueError:
        return str(sbatch)


def job_time_limit(env: Mapping[str, str] | None = None, sbatch: Path = SBATCH) -> tuple[str, str]:
    """(the time limit, where it came from): inside a Slurm job its own limit (Slurm's
    ``SLURM_JOB_START_TIME`` / ``SLURM_JOB_END_TIME``, else ``squeue``); elsewhere the shipped
    sbatch's ``#SBATCH --time``, else :data:`DEFAULT_TIME_LIMIT`."""
    env = os.environ if env is None else env
    start, end = env.get("SLURM_JOB_START_TIME", ""), env.get("SLURM_JOB_END_TIME", "")
    if start.isdigit() and end.isdigit() and int(end) > int(start):
        return format_duration(int(end) - int(start), clock=True), "this Slurm job"
    job = env.get("SLURM_JOB_ID")
    if job:
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%l"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            parse_slurm_time(out)
            return out, "this Slurm job"
        except (OSError, subprocess.SubprocessError, ValueError):
            pass  # no squeue here, or no answer: the sbatch's value below
    value = sbatch_option("time", sbatch)
    return (value, _sbatch_name(sbatch)) if value else (DEFAULT_TIME_LIMIT, "default")


def job_signal_lead(sbatch: Path = SBATCH) -> tuple[float, str]:
    """(seconds of warning before the time limit, where that came from): the shipped sbatch's
    ``#SBATCH --signal``; 0 when it has none (then nothing checkpoints at the limit)."""
    value = sbatch_option("signal", sbatch)
    if value is None:
        return 0.0, f"no --signal in {_sbatch_name(sbatch)}"
    return parse_signal_lead(value), f"{_sbatch_name(sbatch)} --signal={value}"


def format_duration(seconds: float, clock: bool = False) -> str:
    """``93.9 h`` / ``35.0 min`` / ``40 s``; ``clock``: Slurm's ``H:MM:SS``."""
    if clock:
        s = int(round(seconds))
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class TimePlan:
    """A run of ``steps`` steps of ``step_s`` seconds in Slurm allocations of ``limit_s`` seconds
    (None: no limit), each starting with ``startup_s`` of loading.

    With a warning signal ``signal_s`` seconds before the limit (sbatch ``--signal``, with
    ``--requeue``) every rank checkpoints and the job is requeued: an allocation keeps every step it
    finished before the signal and loses only the step in progress. Without one (``signal_s`` 0), or
    when that checkpoint is missed (a node lost), a requeue resumes from the last periodic checkpoint
    (every ``save_interval`` steps; 0: none)."""

    steps: int
    step_s: float
    limit_s: float | None
    startup_s: float
    save_interval: int
    signal_s: float = 0.0

    @property
    def steps_s(self) -> float:
        return self.steps * self.step_s

    @property
    def steps_per_allocation(self) -> int | None:
        """Steps that finish in one allocation (None: no limit)."""
        if self.limit_s is None:
            return None
        return max(0, math.floor((self.limit_s - self.startup_s - self.signal_s) / self.step_s))

    @property
    def kept_per_allocation(self) -> int | None:
        """Steps an allocation that ends at the limit leaves checkpointed."""
        per = self.steps_per_allocation
        if per is None or self.signal_s > 0:
            return per
        return per - per % self.save_interval if self.save_interval > 0 else 0

    @property
    def allocations(self) -> int | None:
        """Allocations the run needs (None: it can never finish)."""
        per, kept = self.steps_per_allocation, self.kept_per_allocation
        if per is None or self.steps <= per:
            return 1
        return 1 + math.ceil((self.steps - per) / kept) if kept else None

    @property
    def requeues(self) -> int | None:
        return None if self.allocations is None else self.allocations - 1

    @property
    def wall_s(self) -> float:
        """Steps plus one start-up per allocation (steps redone after a requeue not counted)."""
        return self.steps_s + (self.allocations or 1) * self.startup_s

    @property
    def redo_after_missed_signal(self) -> int:
        """Steps redone at most when a requeue goes back to the last periodic checkpoint."""
        per = self.steps_per_allocation or self.steps
        return min(self.save_interval, per) if self.save_interval > 0 else per

    def problems(self) -> list[str]:
        if self.allocations is not None:
            return []
        limit = format_duration(self.limit_s or 0, clock=True)
        if not self.steps_per_allocation:
            return [
                f"one step ({format_duration(self.step_s)}) after the start-up ({format_duration(self.startup_s)}) "
                f"does not fit in the time limit {limit}: the run can never advance; raise the sbatch's --time "
                "(or --time-limit here) or shorten a step"
            ]
        return [
            f"the run needs {self.steps} steps, {self.steps_per_allocation} fit in the time limit {limit}, and "
            f"nothing keeps them at the limit (no warning signal, checkpoint.save_interval={self.save_interval}): "
            "add --signal to the sbatch or set checkpoint.save_interval below the steps per allocation"
        ]

    def describe(self, step_source: str, limit_text: str, limit_source: str, signal_source: str) -> str:
        lines = [
            f"time plan: {self.steps} steps x {format_duration(self.step_s)} ({step_source}) = "
            f"{format_duration(self.steps_s)} of steps"
        ]
        if self.limit_s is None:
            return lines[0] + f"; no time limit ({limit_text}, {limit_source}): one allocation, no requeue"
        signal = (
            f"warning signal {format_duration(self.signal_s)} before it ({signal_source})"
            if self.signal_s
            else f"no warning signal ({signal_source})"
        )
        lines.append(
            f"  time limit {limit_text} ({limit_source}), {signal}, start-up {format_duration(self.startup_s)} "
            "(--startup-minutes)"
        )
        if self.allocations is None:
            return "\n".join([*lines, "  the run cannot finish (see the error below)"])
        lines.append(
            f"  {self.steps_per_allocation} steps per allocation -> {self.allocations} allocation(s), "
            f"{self.requeues} requeue(s); {format_duration(self.wall_s)} in all with start-ups"
        )
        if not self.requeues:
            return "\n".join(lines)
        redo = self.redo_after_missed_signal
        periodic = f"up to {redo} steps ({format_duration(redo * self.step_s)}; checkpoint.save_interval={self.save_interval})"
        if self.signal_s:
            lines += [
                f"  work lost per requeue at most: the step in progress at the signal "
                f"({format_duration(self.step_s)}) + a start-up ({format_duration(self.startup_s)})",
                f"  if the signal's checkpoint is missed: back to the last periodic one, {periodic}",
            ]
        else:
            lines.append(f"  work lost per requeue at most: back to the last periodic checkpoint, {periodic}")
        return "\n".join(lines)


def plan_time(
    cfg: RLVRRunConfig, step_s: float, limit: str, startup_s: float = 900.0, signal_s: float = 0.0
) -> TimePlan:
    """The run's :class:`TimePlan` from its config, ``step_s`` seconds per step, a Slurm time limit
    (``limit``, e.g. ``48:00:00``) and the warning signal's lead (``signal_s``; 0: none)."""
    if step_s <= 0:
        raise ValueError(f"seconds per step must be > 0, got {step_s:g}")
    return TimePlan(
        steps=total_rl_steps(cfg),
        step_s=step_s,
        limit_s=parse_slurm_time(limit),
        startup_s=startup_s,
        save_interval=cfg.checkpoint.save_interval,
        signal_s=signal_s,
    )
