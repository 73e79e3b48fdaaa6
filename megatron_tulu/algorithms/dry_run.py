"""The RLVR dry run (``examples/rlvr_405b.py --dry-run``): the launch plan, printed, with no GPU and no
process group.

It reads the node count from ``--nodes`` / ``--gpus-per-node`` or Slurm (``SLURM_NNODES``,
``SLURM_GPUS_ON_NODE``), makes the checks ``RLTrainer.setup`` makes
(:mod:`megatron_tulu.algorithms.launch_plan`), prints each rank's role, the per-GPU memory plan, the
weight-refit plan and the run's hours and Slurm requeues, and exits 2 on a plan that cannot run.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from megatron_tulu.algorithms.launch_plan import (
    ValueSource,
    check_rl_plan,
    job_signal_lead,
    job_time_limit,
    locate_value_model,
    plan_memory,
    plan_time,
)
from megatron_tulu.config.schema import ModelConfig

DEFAULT_PRESET = "rlvr_tulu3_405b"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr_405b.py",
        description="Tülu 3 RLVR launch entry (Megatron learners + vLLM engines); --dry-run checks a layout.",
        epilog="Other arguments are Hydra overrides, e.g. parallel.tp=8 parallel.pp=14 rollout.num_engines=2",
    )
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; no GPUs needed")
    p.add_argument("--nodes", type=int, default=None, help="default: $SLURM_NNODES")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: $SLURM_GPUS_ON_NODE, else 8")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU (H100: 80)")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="fail when a rank's estimate exceeds this (default: rlvr.memory_limit_gb, else --gpu-memory-gb; "
        "0 disables the check)",
    )
    p.add_argument(
        "--recompute",
        choices=["config", "auto", "none", "selective", "full"],
        default="config",
        help="activation recompute assumed by the memory estimate (config: parallel.recompute, what the "
        "run will use; auto: the least that fits)",
    )
    p.add_argument("--grad-dtype", choices=["fp32", "bf16"], default="fp32", help="Megatron grad buffer")
    p.add_argument(
        "--value-arch",
        default="auto",
        help="value model architecture: a hydra_conf/model name, 'policy', or 'none' (auto: from "
        "rlvr.value_model's config.json, local or in the Hugging Face cache; none for GRPO)",
    )
    p.add_argument("--ib-gbps", type=float, default=400.0, help="inter-node bandwidth per GPU, Gbit/s")
    p.add_argument("--nvlink-gbps", type=float, default=3600.0, help="intra-node bandwidth per GPU, Gbit/s")
    p.add_argument("--no-refit-plan", action="store_true", help="skip the refit plan (faster)")
    p.add_argument(
        "--step-seconds",
        type=float,
        default=None,
        help="wall seconds per RL step for the time plan (default: rlvr.expected_step_seconds)",
    )
    p.add_argument(
        "--time-limit",
        default=None,
        help="Slurm time limit of one allocation, e.g. 48:00:00 or 2-00:00:00 (default: this job's "
        "limit inside Slurm, else the shipped sbatch's #SBATCH --time)",
    )
    p.add_argument(
        "--signal-seconds",
        type=float,
        default=None,
        help="Slurm's warning signal before the time limit, seconds (default: the shipped sbatch's "
        "#SBATCH --signal; 0: none, requeues resume from periodic checkpoints)",
    )
    p.add_argument(
        "--startup-minutes",
        type=float,
        default=15.0,
        help="per allocation: loading the models and starting the engines before the first step",
    )
    return p


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options, Hydra overrides); the 405B preset unless the overrides name a preset."""
    args, rest = parser().parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser().error(f"unknown options {unknown}")
    if not any(re.match(r"^(\+{0,2}preset=|~preset)", a) for a in rest):
        rest = [f"preset={DEFAULT_PRESET}", *rest]
    return args, rest


# ------------------------------------------------------------------------------------ value model
def _model_yaml(name: str) -> ModelConfig:
    from omegaconf import OmegaConf

    from megatron_tulu.config.load import config_dir, to_dataclass

    path = config_dir() / "model" / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
        raise SystemExit(f"--value-arch {name}: no {path}; choose from {choices}, 'policy' or 'none'")
    return to_dataclass(OmegaConf.load(path), ModelConfig)


def value_model_config(cfg, arch: str, source: ValueSource) -> tuple[ModelConfig | None, str]:
    """The value model's architecture for the memory plan (None: no value model) and where it came
    from. A directory (local or cached) is read as setup reads it (``model_config_from_hf``); only a
    Hub id that setup would download is sized from its name."""
    from megatron_tulu.losses.estimators import get_estimator  # the estimator's needs, not its name

    if arch == "none" or (arch == "auto" and not get_estimator(cfg.rlvr.estimator).needs_critic):
        return None, "none"
    if arch == "policy":
        return cfg.model, "the policy's architecture (--value-arch policy)"
    if arch != "auto":
        return _model_yaml(arch), f"hydra_conf/model/{arch}.yaml (--value-arch)"
    if source.kind == "policy":
        return cfg.model, "the policy's architecture (no rlvr.value_model)"
    if source.path is not None:
        from megatron_tulu.models.hf_io import model_config_from_hf

        return model_config_from_hf(source.path), f"{source.path}/config.json"
    size = re.search(r"(?i)(?<![\d.])(8|70|405)b", Path(source.spec or "").name)
    if size:
        return _model_yaml(f"llama3.1_{size.group(1)}b"), "the Hub id's name (a guess: not downloaded yet)"
    return cfg.model, "the policy's architecture (the Hub id's name gives no size; not downloaded yet)"


def describe_value_split(value: ModelConfig, parallel, roles) -> str:
    """How the value model's layers sit on the learners' pipeline stages (the split the RL trainer
    builds: Megatron-Core's first/last-stage counts when PP does not divide its layers)."""
    from megatron_tulu.config.validate import pipeline_stage_layers, validate_layout

    validate_layout(
        value, dataclasses.replace(parallel, dp=roles.dp), roles.learner_world_size, uneven_stages=True
    )
    layers = pipeline_stage_layers(value.num_layers, roles.pp, parallel.vpp)
    if len(set(layers)) == 1:
        split = f"{layers[0]} per stage"
    else:
        split = (
            f"{layers[0]} + {roles.pp - 2} x {layers[1]} + {layers[-1]} (uneven: Megatron-Core "
            "num_layers_in_first/last_pipeline_stage)"
        )
    return f"value model {value.name}: {value.num_layers} layers on the learners' TP{roles.tp} x PP{roles.pp}: {split}"


# ------------------------------------------------------------------------------------------ refit
def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), sum(values) / len(values), max(values)


def refit_report(cfg, roles, args: argparse.Namespace, gpus_per_node: int) -> str:
    from megatron_tulu.rollout.bridge.layouts import DTYPE_BYTES, EngineLayout, LearnerLayout, PlanError
    from megatron_tulu.rollout.bridge.planner import (
        naive_broadcast_summary,
        plan_refit,
        predict_link_seconds,
    )

    impl = "transformer_engine" if cfg.precision.transformer_impl == "transformer_engine" else "local"
    dtype = DTYPE_BYTES.get(cfg.precision.params_dtype, 2)
    learner = LearnerLayout(roles.tp, roles.pp, roles.dp, cfg.model, dtype, impl)
    engine = EngineLayout(roles.engine_tp, roles.num_engines)
    plan = plan_refit(learner, engine)
    naive = naive_broadcast_summary(learner, engine)
    lw = learner.world_size

    def place(rank: int) -> int:  # planner rank (engines after learners) -> GPU of this placement
        if rank < lw:
            return rank
        e, n = divmod(rank - lw, roles.engine_tp)
        return roles.engine_rank(e, n)

    def seconds(links: dict[tuple[int, int], int]) -> float:
        moved: dict[tuple[int, int], int] = {}
        for (src, dst), b in links.items():
            key = (place(src), place(dst))
            if key[0] != key[1]:  # same GPU (colocated): a local copy
                moved[key] = moved.get(key, 0) + b
        return predict_link_seconds(moved, args.nvlink_gbps, args.ib_gbps, gpus_per_node)[0]

    ours_links = {
        (src, lw + e * roles.engine_tp + n): b for (src, (e, n)), b in plan.bytes_per_link().items()
    }
    ours_s, naive_s = seconds(ours_links), seconds(naive.links)
    sent = [plan.bytes_per_sender().get(r, 0) for r in range(lw)]
    recv = list(plan.bytes_per_receiver().values())
    nsent = [naive.bytes_per_sender.get(r, 0) for r in range(lw)]
    nrecv = list(naive.bytes_per_receiver.values())
    ratio = plan.receive_ratio()

    def row(label: str, a: tuple[float, float, float], b: tuple[float, float, float]) -> str:
        fa = "/".join(f"{x / 1e9:.2f}" for x in a)
        fb = "/".join(f"{x / 1e9:.2f}" for x in b)
        return f"  {label:<34}{fa:>24}{fb:>26}"

    lines = [
        f"refit plan (learner TP{roles.tp} x PP{roles.pp} x DP{roles.dp} -> {roles.num_engines} engine(s) x "
        f"TP{roles.engine_tp}, {cfg.precision.params_dtype} on the wire; IB {args.ib_gbps:g} Gb/s per GPU "
        f"between nodes, NVLink {args.nvlink_gbps:g} Gb/s inside a node)",
        f"  {'':<34}{'shard-exact (ours)':>24}{'naive broadcast':>26}",
        row("GB per sender min/mean/max", _stats(sent), _stats(nsent)),
        row("GB per receiver min/mean/max", _stats(recv), _stats(nrecv)),
        f"  {'senders used':<34}{f'{len(plan.senders())}/{lw}':>24}{f'{len(naive.bytes_per_sender)}/{lw}':>26}",
        f"  {'received / shard (max)':<34}{max(ratio.values()):>24.2f}"
        f"{max(naive.receive_ratio().values()):>26.2f}",
        f"  {'transfers':<34}{len(plan.transfers):>24,}{'-':>26}",
        f"  {'total GB on the wire':<34}{plan.total_bytes / 1e9:>24,.2f}{sum(naive.links.values()) / 1e9:>26,.2f}",
        f"  {'predicted seconds':<34}{ours_s:>24.3f}{naive_s:>26.3f}",
        f"  speed-up {naive_s / max(ours_s, 1e-12):.1f}x (wire time only: no latency, congestion or "
        "reload_weights; Tülu 3 reports ~25 s per 405B weight transfer)",
    ]
    # the same shard-exact refit into blockwise-FP8 engines (rollout.weight_dtype=fp8_block)
    try:
        fp8 = plan_refit(learner, EngineLayout(roles.engine_tp, roles.num_engines, weight_dtype="fp8_block"))
    except PlanError as exc:
        lines.append(f"  fp8_block engines: not possible with this layout ({exc})")
        return "\n".join(lines)
    fp8_s = seconds(
        {(src, lw + e * roles.engine_tp + n): b for (src, (e, n)), b in fp8.bytes_per_link().items()}
    )
    configured = getattr(cfg.rollout, "weight_dtype", "auto")
    lines += [
        f"  {'engine weights (configured: ' + configured + ')':<34}"
        f"{cfg.precision.params_dtype + ' (auto)':>24}{'fp8_block':>26}",
        f"  {'GB per receiver max':<34}{max(recv) / 1e9:>24,.2f}{max(fp8.bytes_per_receiver().values()) / 1e9:>26,.2f}",
        f"  {'received / bf16 shard (max)':<34}{max(plan.bf16_ratio().values()):>24.4f}"
        f"{max(fp8.bf16_ratio().values()):>26.4f}",
        f"  {'total GB on the wire':<34}{plan.total_bytes / 1e9:>24,.2f}{fp8.total_bytes / 1e9:>26,.2f}",
        f"  {'predicted seconds':<34}{ours_s:>24.3f}{fp8_s:>26.3f}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- time
def time_report(cfg, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The time plan's lines and its problems (a run that can never finish)."""
    if args.step_seconds is not None:
        step_s, step_source = args.step_seconds, "--step-seconds"
    elif cfg.rlvr.expected_step_seconds:
        step_s, step_source = cfg.rlvr.expected_step_seconds, "rlvr.expected_step_seconds"
    else:
        return (
            "time plan: no estimate (pass --step-seconds or set rlvr.expected_step_seconds to the seconds one "
            "step takes on the cluster)",
            [],
        )
    limit, limit_source = (args.time_limit, "--time-limit") if args.time_limit else job_time_limit()
    if args.signal_seconds is not None:
        signal_s, signal_source = args.signal_seconds, "--signal-seconds"
    else:
        signal_s, signal_source = job_signal_lead()
    try:
        plan = plan_time(cfg, step_s, limit, startup_s=args.startup_minutes * 60, signal_s=signal_s)
    except ValueError as exc:
        return "time plan: not made", [f"time plan: {exc}"]
    return plan.describe(step_source, limit, limit_source, signal_source), plan.problems()


# ---------------------------------------------------------------------------------------- dry run
def dry_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from megatron_tulu.algorithms.memory import GB, format_memory_table
    from megatron_tulu.algorithms.roles import LayoutError, assign_roles, world_from_env
    from megatron_tulu.config.load import load_config
    from megatron_tulu.config.schema import RLVRRunConfig
    from megatron_tulu.errors import error_text, is_user_error

    env_nodes, env_gpus = world_from_env()
    nodes = args.nodes or env_nodes
    gpn = args.gpus_per_node or env_gpus or 8
    if not nodes:
        print("dry run: pass --nodes N (or run inside a Slurm allocation: $SLURM_NNODES)", file=sys.stderr)
        return 2
    cfg = load_config(overrides, config_name="rlvr", schema=RLVRRunConfig)
    m, r, o = cfg.model, cfg.rollout, cfg.rlvr
    print(f"config: {' '.join(overrides)}")
    print(
        f"model {m.name}: {m.num_layers} layers, hidden {m.hidden_size}, ffn {m.ffn_hidden_size}, heads "
        f"{m.num_attention_heads}, KV groups {m.num_query_groups}, vocab {m.vocab_size}"
    )
    print(
        f"RLVR: {o.estimator}, beta {o.beta}, lr {cfg.optimizer.lr:g} ({cfg.optimizer.lr_decay_style}, warmup "
        f"{cfg.optimizer.warmup_ratio}), {o.prompts_per_step} prompts x {r.samples_per_prompt} samples per step, "
        f"K={o.ppo_epochs}, mini-batches {o.num_mini_batches}, prompt/response {r.max_prompt_len}/"
        f"{r.max_new_tokens}, {o.total_episodes:,} episodes, async={o.async_mode}"
    )
    try:
        roles = assign_roles(m, cfg.parallel, r, nodes=nodes, gpus_per_node=gpn)
        # the checks RLTrainer.setup makes: RL config, batch over DP / micro- / mini-batches
        micro = check_rl_plan(cfg, roles.dp)
        from megatron_tulu.losses.estimators import get_estimator  # loaded by check_rl_plan

        critic = get_estimator(o.estimator).needs_critic
        # the value model setup loads (GAE only): refused here when it cannot load there
        source = locate_value_model(o.value_model) if critic else ValueSource(None, "policy")
        value, value_from = value_model_config(cfg, args.value_arch, source)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"\n{error_text(exc)}", file=sys.stderr)  # the one `error:` line the real run would print
        return 2
    rollouts = o.prompts_per_step * r.samples_per_prompt
    print("\nroles:\n" + roles.describe())
    print(
        f"  {rollouts} rollouts per step -> {rollouts // roles.dp} per learner DP rank = {micro} micro-batches "
        f"of {cfg.train.micro_batch_size}; {-(-rollouts // roles.num_engines)} prompts per engine"
    )
    if critic:
        print(f"\nvalue model source: {source.describe()}")
    if value is not None:
        try:
            print(describe_value_split(value, cfg.parallel, roles) + f"; architecture from {value_from}")
        except LayoutError as exc:
            print(f"\nLAYOUT ERROR (value model): {exc}", file=sys.stderr)
            return 2

    if args.memory_limit_gb is not None:
        limit = args.memory_limit_gb
    elif o.memory_limit_gb is not None:
        limit = o.memory_limit_gb
    else:
        limit = args.gpu_memory_gb
    recompute = None if args.recompute == "config" else args.recompute
    plan = plan_memory(
        cfg,
        roles.tp,
        roles.pp,
        roles.dp,
        value,
        gpu_memory_gb=args.gpu_memory_gb,
        limit_gb=limit,
        recompute=recompute,
        grad_dtype=args.grad_dtype,
    )
    alts = {f"TOTAL with recompute={k}": v for k, v in plan.by_mode.items() if k != plan.recompute}
    vname = "none" if value is None else value.name
    print(
        f"\nper-GPU memory (value model: {vname}; recompute={plan.recompute} "
        f"({'parallel.recompute' if args.recompute == 'config' else args.recompute}))"
    )
    print(format_memory_table(plan.learner, plan.engine, limit_gb=limit or None, alternatives=alts))
    if plan.colocated:
        print(f"  colocated rank: learner + engine = {plan.learner_rank_total / GB:.2f} GB")
    problems = list(plan.problems)

    if not args.no_refit_plan:
        from megatron_tulu.rollout.bridge.layouts import PlanError

        try:
            print("\n" + refit_report(cfg, roles, args, gpn))
        except PlanError as exc:
            problems.append(f"refit plan: {exc}")
    text, time_problems = time_report(cfg, args)
    print("\n" + text)
    problems += time_problems
    if problems:
        print("\nLAYOUT ERROR:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    print(
        f"\ndry run OK: {roles.world_size} ranks, launch with torchrun --nnodes {nodes} --nproc-per-node {gpn}"
    )
    return 0
