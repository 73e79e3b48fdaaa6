"""`megatron-tulu plan-refit`: print the learner -> vLLM weight refit plan and its cost.

Pure arithmetic (no GPUs, no processes): runs on a laptop for any model preset, e.g.::

    megatron-tulu plan-refit preset=rlvr_tulu3_405b --learner-gpus 224 --json plan.json
    megatron-tulu plan-refit preset=rlvr_tulu3_405b --learner-gpus 224 --num-engines 2
    megatron-tulu plan-refit ... --weight-dtype fp8_block   # + bytes and seconds of bf16 vs FP8 engines

Hydra overrides of the RLVR config (``preset=...``, ``model=...``, ``parallel.tp=...``,
``rollout.*``) pick the model, the learner's TP / PP and the engines (``rollout.engine_tp``,
``num_engines``, ``weight_dtype``, ``refit_bucket_mb``, ``refit_receive_buffer_mb``; the options
below override them); DP comes from ``--learner-gpus`` (or ``--learner-nodes`` x
``--gpus-per-node``, or ``parallel.dp`` when set, else 1).

Besides bytes and time it reports what the engine ranks pay for a refit
(:mod:`megatron_tulu.rollout.bridge.schedule`): the NCCL communicators of the refit group (one; unbatched send/recv would
create one per link) and, per engine rank, the peak of its receive buffers under
``refit_receive_buffer_mb`` and the reload calls that takes at worst.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from megatron_tulu.dtypes import BYTES as DTYPE_BYTES
from megatron_tulu.rollout.bridge.layouts import WEIGHT_DTYPES, EngineLayout, LearnerLayout, PlanError
from megatron_tulu.rollout.bridge.planner import NaiveSummary, RefitPlan, naive_broadcast_summary, plan_refit
from megatron_tulu.rollout.bridge.schedule import MIB, ReceiveSchedule, receive_schedule


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="megatron-tulu plan-refit",
        description="Print the shard-exact learner -> vLLM refit plan next to a naive full-tensor broadcast.",
        epilog="Other arguments are Hydra overrides, e.g. model=llama3.1_405b parallel.tp=8 parallel.pp=14",
    )
    p.add_argument(
        "--engine-tp", type=int, default=None, help="vLLM tensor-parallel size N (rollout.engine_tp)"
    )
    p.add_argument("--num-engines", type=int, default=None, help="vLLM engines (rollout.num_engines)")
    p.add_argument("--bucket-mb", type=int, default=None, help="refit bucket, MiB (rollout.refit_bucket_mb)")
    p.add_argument(
        "--receive-buffer-mb",
        type=int,
        default=None,
        help="what an engine rank may hold in refit buffers at once, MiB (rollout.refit_receive_buffer_mb; "
        "0: unbounded)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--learner-gpus", type=int, default=None, help="learner GPUs (DP = gpus / (TP*PP))")
    g.add_argument("--learner-nodes", type=int, default=None, help="learner nodes (x --gpus-per-node)")
    p.add_argument("--ib-gbps", type=float, default=400.0, help="inter-node bandwidth per GPU, Gbit/s")
    p.add_argument("--nvlink-gbps", type=float, default=3600.0, help="intra-node bandwidth per GPU, Gbit/s")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16", help="dtype on the wire")
    p.add_argument(
        "--weight-dtype",
        choices=list(WEIGHT_DTYPES),
        default=None,
        help="engine weights (rollout.weight_dtype): auto = --dtype on the wire; fp8_block = e4m3 + fp32 "
        "128x128 block scales for the GEMM weights, bf16 for the rest (prints both dtypes side by side)",
    )
    p.add_argument(
        "--transformer-impl",
        choices=["local", "transformer_engine"],
        default="local",
        help="Megatron layer spec (only changes the norm parameter names)",
    )
    p.add_argument("--json", default=None, help="also write the summaries to this JSON file")
    p.add_argument("--verbose-links", action="store_true", help="print every (sender, receiver) link")
    return p


def _gb(x: float) -> str:
    return f"{x / 1e9:,.3f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        )

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


@dataclass
class _Plans:
    """The planned refit, the naive broadcast it is compared with, and (``--weight-dtype`` set)
    the same refit into engines of the other weight dtype."""

    learner: LearnerLayout
    engine: EngineLayout
    plan: RefitPlan
    naive: NaiveSummary
    other: RefitPlan | None
    schedule: ReceiveSchedule


def _learner_gpus(args: argparse.Namespace, cfg: Any) -> int:
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    if args.learner_nodes is not None:
        gpus = args.learner_nodes * args.gpus_per_node
    elif args.learner_gpus is not None:
        gpus = args.learner_gpus
    else:
        gpus = tp * pp * (cfg.parallel.dp if cfg.parallel.dp > 0 else 1)
    if gpus % (tp * pp):
        raise PlanError(f"{gpus} learner GPUs are not a multiple of TP{tp} x PP{pp} = {tp * pp}")
    if cfg.parallel.cp != 1 or cfg.parallel.ep != 1 or cfg.parallel.vpp:
        raise PlanError("the planner covers cp=1, ep=1 and no virtual pipeline")
    return gpus


def plan_layouts(args: argparse.Namespace, cfg: Any) -> _Plans:
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    dp = _learner_gpus(args, cfg) // (tp * pp)
    learner = LearnerLayout(tp, pp, dp, cfg.model, DTYPE_BYTES[args.dtype], args.transformer_impl)
    engine = EngineLayout(args.engine_tp, args.num_engines, weight_dtype=args.weight_dtype)
    other = None
    if args.weight_dtype != "auto":
        other = plan_refit(learner, EngineLayout(args.engine_tp, args.num_engines, weight_dtype="auto"))
    plan = plan_refit(learner, engine)
    schedule = receive_schedule(
        plan,
        bucket_bytes=args.bucket_mb * MIB,
        elem_size=DTYPE_BYTES[args.dtype],
        receive_buffer_bytes=args.receive_buffer_mb * MIB if args.receive_buffer_mb else None,
    )
    return _Plans(learner, engine, plan, naive_broadcast_summary(learner, engine), other, schedule)


def _from_config(args: argparse.Namespace, cfg: Any) -> None:
    """Options left unset take the config's rollout values."""
    r = cfg.rollout
    for opt, value in (
        ("engine_tp", r.engine_tp),
        ("num_engines", r.num_engines),
        ("weight_dtype", r.weight_dtype),
        ("bucket_mb", r.refit_bucket_mb),
        ("receive_buffer_mb", r.refit_receive_buffer_mb),
    ):
        if getattr(args, opt) is None:
            setattr(args, opt, value)


def print_layouts(args: argparse.Namespace, cfg: Any, p: _Plans) -> None:
    m, learner, engine = cfg.model, p.learner, p.engine
    print(
        f"model {m.name}: {m.num_layers} layers, hidden {m.hidden_size}, heads {m.num_attention_heads}, "
        f"KV groups {m.num_query_groups}, vocab {m.vocab_size}, tied={m.tie_word_embeddings}, {args.dtype}, "
        f"engine weights {args.weight_dtype}"
    )
    print(
        f"learner TP{learner.tp} x PP{learner.pp} x DP{learner.dp} = {learner.world_size} GPUs "
        f"({m.num_layers // learner.pp} layers per stage, Megatron padded vocab {learner.vocab_padded}) "
        f"-> {engine.num_engines} vLLM engine(s) x TP{engine.tp}"
    )
    print(
        f"links: IB {args.ib_gbps:g} Gb/s per GPU between nodes, NVLink {args.nvlink_gbps:g} Gb/s inside a node, "
        f"{args.gpus_per_node} GPUs/node; engines placed on the nodes after the learner's\n"
    )


def print_against_naive(args: argparse.Namespace, world_size: int, ours: dict, base: dict) -> None:
    rows = []
    for label, key in (
        ("bytes per receiver (GB)", "bytes_per_receiver"),
        ("bytes per sender (GB)", "bytes_per_sender"),
    ):
        for s in ("min", "mean", "max"):
            rows.append([f"{label} {s}", _gb(ours[key][s]), _gb(base[key][s])])
    rows += [
        ["received / shard", f"{ours['receive_ratio']['max']:.2f}", f"{base['receive_ratio']['max']:.2f}"],
        ["senders used", f"{ours['senders']}/{world_size}", f"{base['senders']}/{world_size}"],
        [
            "messages per receiver (max)",
            f"{ours['messages_per_receiver']['max']}",
            f"{base['messages_per_receiver']['max']}",
        ],
        ["messages per sender (max)", f"{ours['messages_per_sender']['max']}", "-"],
        ["total bytes on the wire (GB)", _gb(ours["total_bytes"]), _gb(base["bytes_per_receiver"]["total"])],
        ["predicted seconds", f"{ours['predicted_seconds']:.3f}", f"{base['predicted_seconds']:.3f}"],
    ]
    print(_table(rows, ["", "shard-exact (ours)", f"naive broadcast ({args.dtype})"]))


def print_weight_dtypes(args: argparse.Namespace, wire: dict, fp8: dict) -> None:
    """The same shard-exact refit into engines of ``--dtype`` weights vs ``--weight-dtype``."""
    print(
        f"\nengine weights: {args.dtype} vs {args.weight_dtype} (e4m3 GEMM weights + fp32 128x128 "
        "block scales, embeddings / lm_head / norms bf16), shard-exact refit"
    )
    rows = [
        [
            "bytes per receiver (GB) max",
            _gb(wire["bytes_per_receiver"]["max"]),
            _gb(fp8["bytes_per_receiver"]["max"]),
        ],
        ["total bytes on the wire (GB)", _gb(wire["total_bytes"]), _gb(fp8["total_bytes"])],
        [
            "received / bf16 shard (max)",
            f"{wire['bytes_over_bf16_shard']['max']:.4f}",
            f"{fp8['bytes_over_bf16_shard']['max']:.4f}",
        ],
        ["predicted seconds", f"{wire['predicted_seconds']:.3f}", f"{fp8['predicted_seconds']:.3f}"],
    ]
    print(_table(rows, ["", args.dtype, args.weight_dtype]))


def print_engine_costs(args: argparse.Namespace, sched: ReceiveSchedule) -> None:
    """Communicators and receive buffers: what the engine ranks pay for a refit beyond its bytes."""
    s = sched.summary()
    bound = f"{args.receive_buffer_mb:,} MiB" if args.receive_buffer_mb else "unbounded"
    print(
        f"\nrefit group: {s['communicators']} NCCL communicator (grouped P2P on an eagerly connected "
        f"group; unbatched send/recv would create {s['unbatched_pair_communicators']} 2-rank ones)"
    )
    print(
        f"receive buffers: {s['buckets']} buckets of <= {args.bucket_mb} MiB (largest "
        f"{_gb(s['largest_bucket_full_bytes'])} GB full-size), bound {bound} "
        f"(rollout.refit_receive_buffer_mb): peak {_gb(s['peak_receive_buffer_bytes'])} GB per engine "
        f"rank (least possible {_gb(s['min_receive_buffer_bytes'])} GB), at worst "
        f"{max(r['reload_calls_worst_case'] for r in s['engine_ranks'])} reload calls (if vLLM held every tensor until its call returned)"
    )


def print_receivers(
    args: argparse.Namespace, plan: RefitPlan, ours: dict, base: dict, sched: ReceiveSchedule
) -> None:
    print(
        f"\nours: {ours['transfers']} transfers over {ours['links']} (sender, receiver) links, "
        f"link bytes min/mean/max {_gb(ours['bytes_per_link']['min'])}/{_gb(ours['bytes_per_link']['mean'])}/"
        f"{_gb(ours['bytes_per_link']['max'])} GB; speed-up {base['predicted_seconds'] / max(ours['predicted_seconds'], 1e-12):.1f}x"
    )
    messages = plan.messages_per_receiver()
    peers = sched.peers()
    rows = [
        [f"engine {e} rank {n}", _gb(b), str(messages[(e, n)]), str(peers[(e, n)]), _gb(sched.peak[(e, n)])]
        for (e, n), b in plan.bytes_per_receiver().items()
    ]
    print("\n" + _table(rows, ["receiver", "GB", "messages", "senders", "peak receive buffers GB"]))
    if args.verbose_links:
        links = sorted(plan.bytes_per_link().items())
        print(
            "\n"
            + _table(
                [[str(src), f"e{e}r{n}", _gb(b)] for (src, (e, n)), b in links], ["sender", "receiver", "GB"]
            )
        )


def main(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        print(f"error: plan-refit: unknown options {unknown}", file=sys.stderr)
        return 2
    from megatron_tulu.config.load import load_config
    from megatron_tulu.config.schema import RLVRRunConfig

    cfg = load_config(rest, config_name="rlvr", schema=RLVRRunConfig)
    _from_config(args, cfg)
    try:
        plans = plan_layouts(args, cfg)
    except PlanError as exc:
        print(f"error: plan-refit: {exc}", file=sys.stderr)
        return 2
    bw = dict(
        intra_node_gbps=args.nvlink_gbps, inter_node_gbps=args.ib_gbps, gpus_per_node=args.gpus_per_node
    )
    ours, base = plans.plan.summary(**bw), plans.naive.summary(**bw)
    by_dtype = {args.weight_dtype: ours}
    if plans.other is not None:
        by_dtype = {"auto": plans.other.summary(**bw), args.weight_dtype: ours}

    print_layouts(args, cfg, plans)
    print_against_naive(args, plans.learner.world_size, ours, base)
    if plans.other is not None:
        print_weight_dtypes(args, by_dtype["auto"], ours)
    print_engine_costs(args, plans.schedule)
    print_receivers(args, plans.plan, ours, base, plans.schedule)
    if args.json:
        learner, engine = plans.learner, plans.engine
        summary = {
            "learner": {
                "tp": learner.tp,
                "pp": learner.pp,
                "dp": learner.dp,
                "model": cfg.model.name,
                "dtype": args.dtype,
            },
            "engine": {"tp": engine.tp, "num_engines": engine.num_engines, "weight_dtype": args.weight_dtype},
            "bandwidth": bw,
            "ours": ours,
            "naive_broadcast": base,
            "by_weight_dtype": by_dtype,
            # what the engine ranks pay beyond the bytes: one communicator for the refit group,
            # and per engine rank its peak receive buffers (``engine_ranks``)
            **plans.schedule.summary(),
        }
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
