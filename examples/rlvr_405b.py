"""Production RLVR entry: Llama-3.1-405B policy + 8B value model, Megatron learners + vLLM engines.

Launched by ``torchrun`` under Slurm (see ``examples/slurm/rlvr_405b.sbatch``); every rank runs
this file and :mod:`megatron_tulu.algorithms.roles` decides what it does. Arguments are Hydra
overrides of ``hydra_conf/rlvr.yaml`` (``preset=rlvr_tulu3_405b`` unless a preset is given)::

    torchrun ... examples/rlvr_405b.py model.hf_path=/ckpt/tulu3-405b-dpo rlvr.value_model=/ckpt/rm-8b

``--dry-run`` needs no GPU and no process group: it reads the node count from ``--nodes`` /
``--gpus-per-node`` or Slurm (``SLURM_NNODES``, ``SLURM_GPUS_ON_NODE``), validates the layout,
prints each rank's role, the per-GPU memory estimate and the weight-refit plan, and exits non-zero
on a layout that cannot run::

    python examples/rlvr_405b.py --dry-run --nodes 32 --gpus-per-node 8
    python examples/rlvr_405b.py --dry-run --nodes 32 parallel.pp=6 rollout.num_engines=1
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_PRESET = "rlvr_tulu3_405b"


def _parser() -> argparse.ArgumentParser:
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
        help="fail when a rank's estimate exceeds this (default: --gpu-memory-gb; 0 disables the check)",
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
        "rlvr.value_model's config.json or its size in the name, none for GRPO)",
    )
    p.add_argument("--ib-gbps", type=float, default=400.0, help="inter-node bandwidth per GPU, Gbit/s")
    p.add_argument("--nvlink-gbps", type=float, default=3600.0, help="intra-node bandwidth per GPU, Gbit/s")
    p.add_argument("--no-refit-plan", action="store_true", help="skip the refit plan (faster)")
    return p


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    args, rest = _parser().parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        _parser().error(f"unknown options {unknown}")
    if not any(re.match(r"^(\+{0,2}preset=|~preset)", a) for a in rest):
        rest = [f"preset={DEFAULT_PRESET}", *rest]
    return args, rest


# ------------------------------------------------------------------------------------- dry run
def _model_yaml(name: str):
    from omegaconf import OmegaConf

    from megatron_tulu.config.load import config_dir, to_dataclass
    from megatron_tulu.config.schema import ModelConfig

    path = config_dir() / "model" / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
        raise SystemExit(f"--value-arch {name}: no {path}; choose from {choices}, 'policy' or 'none'")
    return to_dataclass(OmegaConf.load(path), ModelConfig)


def resolve_value_model(cfg, arch: str):
    """The value model's architecture for the estimate (None: no value model)."""
    import json

    from megatron_tulu.config.schema import ModelConfig

    if arch == "none" or (arch == "auto" and cfg.rlvr.estimator == "grpo"):
        return None
    if arch == "policy":
        return cfg.model
    if arch != "auto":
        return _model_yaml(arch)
    src = cfg.rlvr.value_model
    if not src:
        return cfg.model  # initialised from the policy
    config_json = Path(src) / "config.json"
    if config_json.exists():
        hf = json.loads(config_json.read_text())
        return ModelConfig(
            name=Path(src).name,
            num_layers=hf["num_hidden_layers"],
            hidden_size=hf["hidden_size"],
            ffn_hidden_size=hf["intermediate_size"],
            num_attention_heads=hf["num_attention_heads"],
            num_query_groups=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            kv_channels=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            vocab_size=hf["vocab_size"],
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
        )
    size = re.search(r"(?i)(?<![\d.])(8|70|405)b", Path(src).name)
    return _model_yaml(f"llama3.1_{size.group(1)}b") if size else cfg.model


def describe_value_split(value, parallel, roles) -> str:
    """How the value model's layers sit on the learners' pipeline stages (the split the RL trainer
    builds: Megatron-Core's first/last-stage counts when PP does not divide its layers)."""
    import dataclasses

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


def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), sum(values) / len(values), max(values)


def refit_report(cfg, roles, args, gpus_per_node: int) -> str:
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


def dry_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from megatron_tulu.algorithms.memory import (
        GB,
        estimate_engine_memory,
        estimate_learner_memory,
        format_memory_table,
    )
    from megatron_tulu.algorithms.roles import (
        LayoutError,
        assign_roles,
        check_rollout_batch,
        world_from_env,
    )
    from megatron_tulu.config.load import load_config
    from megatron_tulu.config.schema import RLVRRunConfig

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
        rollouts = o.prompts_per_step * r.samples_per_prompt
        micro = check_rollout_batch(rollouts, roles.dp, cfg.train.micro_batch_size)
    except LayoutError as exc:
        print(f"\nLAYOUT ERROR: {exc}", file=sys.stderr)
        return 2
    print("\nroles:\n" + roles.describe())
    print(
        f"  {rollouts} rollouts per step -> {rollouts // roles.dp} per learner DP rank = {micro} micro-batches "
        f"of {cfg.train.micro_batch_size}; {-(-rollouts // roles.num_engines)} prompts per engine"
    )

    value = resolve_value_model(cfg, args.value_arch)
    if value is not None:
        try:
            print("\n" + describe_value_split(value, cfg.parallel, roles))
        except LayoutError as exc:
            print(f"\nLAYOUT ERROR (value model): {exc}", file=sys.stderr)
            return 2
    seq = r.max_prompt_len + r.max_new_tokens
    kw = dict(
        seq_len=seq,
        micro_batch=cfg.train.micro_batch_size,
        num_microbatches=max(1, micro // max(1, o.num_mini_batches)),
        sequence_parallel=cfg.parallel.sequence_parallel,
        grad_dtype=args.grad_dtype,
        params_dtype=cfg.precision.params_dtype,
        # a plan for GPUs: unset means the GPU default (the DistributedOptimizer)
        distributed_optimizer=cfg.parallel.use_distributed_optimizer is not False,
        value_model=value,
    )
    limit = args.gpu_memory_gb if args.memory_limit_gb is None else args.memory_limit_gb
    engine = estimate_engine_memory(
        m,
        r.engine_tp,
        seq_len=seq,
        gpu_memory_gb=args.gpu_memory_gb,
        gpu_memory_utilization=r.gpu_memory_utilization,
    )
    extra = engine.total if r.placement == "colocated" else 0.0
    by_mode = {
        mode: estimate_learner_memory(m, roles.tp, roles.pp, roles.dp, recompute=mode, **kw)
        for mode in ("none", "selective", "full")
    }
    if args.recompute == "auto":
        fitting = [k for k, est in by_mode.items() if not limit or est.total + extra <= limit * GB]
        mode = fitting[0] if fitting else "full"
    else:
        mode = cfg.parallel.recompute if args.recompute == "config" else args.recompute
    learner = by_mode[mode]
    alts = {f"TOTAL with recompute={k}": v for k, v in by_mode.items() if k != mode}
    vname = "none" if value is None else value.name
    print(
        f"\nper-GPU memory (value model: {vname}; recompute={mode} ({'parallel.recompute' if args.recompute == 'config' else args.recompute}))"
    )
    print(format_memory_table(learner, engine, limit_gb=limit or None, alternatives=alts))
    if r.placement == "colocated":
        print(f"  colocated rank: learner + engine = {(learner.total + extra) / GB:.2f} GB")

    problems = []
    if limit and learner.total + extra > limit * GB:
        problems.append(
            f"a learner rank needs {(learner.total + extra) / GB:.1f} GB (recompute={mode}) > {limit:g} GB; "
            "set parallel.recompute=full, raise parallel.pp or parallel.tp, lower train.micro_batch_size / "
            "sequence lengths, or use "
            "more nodes (--memory-limit-gb 0 skips this check)"
        )
    if engine.kv_cache <= 0 or engine.max_sequences < 1:
        problems.append(
            f"a TP{r.engine_tp} engine has no room for one {seq}-token sequence in its KV cache; raise "
            "rollout.engine_tp or rollout.gpu_memory_utilization"
        )
    if limit and r.placement == "dedicated" and engine.total > limit * GB:
        problems.append(f"an engine rank needs {engine.total / GB:.1f} GB > {limit:g} GB")

    if not args.no_refit_plan:
        from megatron_tulu.rollout.bridge.layouts import PlanError

        try:
            print("\n" + refit_report(cfg, roles, args, gpn))
        except PlanError as exc:
            problems.append(f"refit plan: {exc}")
    if problems:
        print("\nLAYOUT ERROR:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    print(
        f"\ndry run OK: {roles.world_size} ranks, launch with torchrun --nnodes {nodes} --nproc-per-node {gpn}"
    )
    return 0


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str]) -> int:
    args, overrides = split_argv(argv)
    if args.dry_run:
        from megatron_tulu.errors import silence_import_noise

        silence_import_noise()  # the "Apex / Transformer Engine not installed" lines, as the CLI does
        return dry_run(args, overrides)
    # the real run is `megatron-tulu rlvr`: same process set-up (SIGTERM unwinds, ranks die with
    # their launcher, one `error:` line for user errors) and the same trainer, roles included
    from megatron_tulu.cli import main as cli_main

    return cli_main(["rlvr", *overrides])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
