"""Refit wall time and bytes per vLLM rank: our shard-exact plan vs a naive full-tensor broadcast.

    python benchmarks/bench_refit.py [--learner 2x1 --learner 1x2] [--engine-tp 1 --engine-tp 2]
                                     [--reps 3] [--bucket-mb 4] [--out bench_refit.json]

CPU, the embedded tiny Llama (``build_tiny_model``, fp32). This controller process starts one
real vLLM CPU engine per engine TP (once), then per learner layout launches a Megatron learner
under torchrun (this script, ``--role learner``) that joins every engine's refit group. For
each engine and repetition, both methods run over the same group, in the same process layout:

- **ours**: :func:`~megatron_tulu.rollout.bridge.transport.send_refit` /
  ``RolloutEngine.refit``: every learner rank sends exactly its planned slices (all TP/PP ranks at
  once), each vLLM rank receives exactly its shard and reloads it;
- **naive** (open-instruct / OpenRLHF / TRL style, implemented here): gather the full HF tensors
  on learner rank 0 (TP all-gather + PP gather), send every full tensor to every vLLM rank,
  each rank reloads from the full tensors.

Both stream the same buckets into one ``reload_weights`` pass and acknowledge the last bucket
after the reload, so the wall time (learner side, from a common start barrier to the last ack)
covers gather + wire + reload. Bytes received per vLLM rank are counted by the receivers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------ shared helpers
def _sync(group, key: int, timeout_s: float) -> None:
    """Start barrier of every refit-group member (a 1-element all-reduce)."""
    import torch

    t = torch.tensor([float(key)])
    group.allreduce([t]).wait(timedelta(seconds=timeout_s))


def _elem_size(dtype_name: str) -> int:
    import torch

    return torch.empty((), dtype=getattr(torch, dtype_name)).element_size()


# ------------------------------------------------------------------------------ naive receiver
def naive_receive(worker, spec_dict: dict, engine_index: int, bucket_bytes: int, timeout_s: float) -> dict:
    """Runs inside each vLLM worker (sent by ``collective_rpc``): receive every full HF tensor
    from learner rank 0, bucket by bucket, into one ``reload_weights`` pass; ack at the end."""
    import torch

    from megatron_tulu.rollout.bridge.transport import RefitSpec, bucket_schedule

    spec = RefitSpec.from_dict(spec_dict)
    plan = spec.plan()
    dtype = spec.torch_dtype
    group = worker._refit_group
    buckets = bucket_schedule(plan, bucket_bytes, _elem_size(spec.dtype))
    stats = {"rank": worker.refit_tp_rank(), "bytes_received": 0, "messages": 0}
    t0 = time.perf_counter()
    _sync(group, 1, timeout_s)
    t0 = time.perf_counter()

    def stream():
        for b in buckets:
            bufs = [(n, torch.empty(plan.hf_shapes[n], dtype=dtype)) for n in b.hf_names]
            works = [group.recv([t], 0, 2 * b.index) for _, t in bufs]
            for w in works:
                w.wait(timedelta(seconds=timeout_s))
            for _, t in bufs:
                stats["bytes_received"] += t.numel() * t.element_size()
                stats["messages"] += 1
            yield from bufs

    worker.model_runner.reload_weights(weights_iterator=stream())
    group.send([torch.ones(1, dtype=torch.float64)], 0, 1).wait(timedelta(seconds=timeout_s))
    stats["seconds"] = time.perf_counter() - t0
    return stats


def naive_send(chunks, cfg, spec, group, bucket_bytes: int, timeout_s: float) -> dict:
    """Learner side of the baseline: gather full HF tensors on rank 0, send all to every vLLM rank."""
    import torch
    import torch.distributed as dist

    from megatron_tulu.models.hf_io import collect_hf_state_on_rank0
    from megatron_tulu.rollout.bridge.planner import engine_global_rank
    from megatron_tulu.rollout.bridge.transport import bucket_schedule

    plan = spec.plan()
    rank = dist.get_rank()
    _sync(group, 1, timeout_s)
    t0 = time.perf_counter()
    state = collect_hf_state_on_rank0(chunks, cfg)  # collective over the learner
    stats = {"rank": rank, "bytes_sent": 0, "gather_seconds": time.perf_counter() - t0}
    if rank == 0:
        receivers = [
            engine_global_rank(plan.learner, plan.engine, e, n)
            for e in range(plan.engine.num_engines)
            for n in range(plan.engine.tp)
        ]
        for b in bucket_schedule(plan, bucket_bytes, _elem_size(spec.dtype)):
            works = []
            for dst in receivers:
                for name in b.hf_names:
                    t = state[name].contiguous()
                    works.append(group.send([t], dst, 2 * b.index))
                    stats["bytes_sent"] += t.numel() * t.element_size()
            for w in works:
                w.wait(timedelta(seconds=timeout_s))
        for dst in receivers:
            ack = torch.zeros(1, dtype=torch.float64)
            group.recv([ack], dst, 1).wait(timedelta(seconds=timeout_s))
    stats["seconds"] = time.perf_counter() - t0
    return stats


# ------------------------------------------------------------------------------ learner role
def learner_main(args) -> None:
    import torch.distributed as dist

    from megatron_tulu.config.schema import ParallelConfig, PrecisionConfig
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
    from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf
    from megatron_tulu.rollout.refit import LearnerRefit, refit_spec_for

    cfg = model_config_from_hf(args.hf)
    parallel = ParallelConfig(tp=args.tp, pp=args.pp)
    init_parallel(cfg, parallel, seed=1)
    chunks = build_model(cfg, parallel, PrecisionConfig(), wrap_ddp=False)
    load_hf_weights(chunks, cfg, args.hf)
    records = []
    for target in args.engine:
        host, port, etp = target.rsplit(":", 2)
        spec = refit_spec_for(chunks, cfg, int(etp))
        refit = LearnerRefit(spec, host, int(port), timeout_s=args.timeout)
        for rep in range(args.reps):
            for method in ("ours", "naive"):
                if method == "ours":
                    st = refit.send(chunks, bucket_bytes=args.bucket_bytes)
                else:
                    st = naive_send(chunks, cfg, spec, refit.group, args.bucket_bytes, args.timeout)
                records.append({"engine_tp": int(etp), "rep": rep, "method": method, **st})
        refit.close()
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(records, gathered, dst=0)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps([r for part in gathered for r in part]))
    destroy_parallel()


# ------------------------------------------------------------------------------ controller role
def controller_main(args) -> None:
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # to send naive_receive
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.common import free_port, torchrun_beside
    from megatron_tulu.models.hf_io import model_config_from_hf
    from megatron_tulu.models.tiny import build_tiny_model
    from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout
    from megatron_tulu.rollout.bridge.transport import RefitSpec
    from megatron_tulu.rollout.engine import RolloutEngine

    work = Path(tempfile.mkdtemp(prefix="bench_refit_"))
    hf = build_tiny_model(work / "tiny")
    cfg = model_config_from_hf(hf)
    bucket_bytes = int(args.bucket_mb * 2**20)
    engines, starts = {}, {}
    rows = []
    try:
        for etp in args.engine_tp:
            engines[etp] = RolloutEngine(
                hf, tp=etp, dtype="float32", kv_cache_bytes=128 << 20, max_model_len=256
            )
            starts[etp] = engines[etp].start_seconds
            print(f"engine TP{etp} started in {starts[etp]:.1f} s", flush=True)
        for layout in args.learner:
            tp, pp = (int(x) for x in layout.split("x"))
            ports = {etp: free_port() for etp in engines}
            out = work / f"learner_{layout}.json"
            learner_args = ["--role", "learner", "--hf", str(hf), "--tp", str(tp), "--pp", str(pp)]
            learner_args += ["--reps", str(args.reps), "--bucket-mb", str(args.bucket_mb), "--out", str(out)]
            learner_args += ["--timeout", str(args.timeout)]
            for etp in engines:
                learner_args += ["--engine", f"127.0.0.1:{ports[etp]}:{etp}"]
            worker_stats = []
            log = work / f"learner_{layout}.log"
            with torchrun_beside(
                __file__, tp * pp, learner_args, log, name=f"learner {layout}", timeout=args.timeout * 4
            ):
                for etp, eng in engines.items():
                    spec = RefitSpec(
                        LearnerLayout(tp=tp, pp=pp, dp=1, model=cfg, dtype_bytes=4), EngineLayout(tp=etp)
                    )
                    eng.join_refit_group("127.0.0.1", ports[etp], spec, timeout_s=args.timeout)
                    for rep in range(args.reps):
                        for method in ("ours", "naive"):
                            t0 = time.perf_counter()
                            if method == "ours":
                                st = eng.refit(bucket_bytes=bucket_bytes, timeout_s=args.timeout)
                            else:
                                st = eng.llm.collective_rpc(
                                    naive_receive, args=(spec.to_dict(), 0, bucket_bytes, args.timeout)
                                )
                            rpc = time.perf_counter() - t0
                            worker_stats.append(
                                {
                                    "engine_tp": etp,
                                    "rep": rep,
                                    "method": method,
                                    "workers": st,
                                    "rpc_seconds": rpc,
                                }
                            )
                            shard = spec.plan().shard_bytes
                            print(
                                f"learner {layout} -> vLLM TP{etp} rep {rep} {method:5s}: "
                                + ", ".join(
                                    f"rank {w['rank']} {w['bytes_received'] / 2**20:.2f} MiB "
                                    f"(x{w['bytes_received'] / shard[(0, w['rank'])]:.2f} shard)"
                                    for w in st
                                ),
                                flush=True,
                            )
                    eng.leave_refit_group()
            learner_stats = json.loads(out.read_text())
            for ws in worker_stats:
                sends = [
                    r
                    for r in learner_stats
                    if (r["engine_tp"], r["rep"], r["method"]) == (ws["engine_tp"], ws["rep"], ws["method"])
                ]
                spec = RefitSpec(
                    LearnerLayout(tp=tp, pp=pp, dp=1, model=cfg, dtype_bytes=4),
                    EngineLayout(tp=ws["engine_tp"]),
                )
                shard = spec.plan().shard_bytes
                rows.append(
                    {
                        "learner": f"TP{tp}xPP{pp}",
                        "engine_tp": ws["engine_tp"],
                        "rep": ws["rep"],
                        "method": ws["method"],
                        # learner side: start barrier -> last ack (covers gather, wire, reload)
                        "seconds": max(r["seconds"] for r in sends),
                        "gather_seconds": max(r.get("gather_seconds", 0.0) for r in sends),
                        "receiver_seconds": max(w["seconds"] for w in ws["workers"]),
                        "bytes_sent_per_learner_rank": {str(r["rank"]): r["bytes_sent"] for r in sends},
                        "bytes_received_per_vllm_rank": {
                            str(w["rank"]): w["bytes_received"] for w in ws["workers"]
                        },
                        "shard_bytes_per_vllm_rank": {
                            str(w["rank"]): shard[(0, w["rank"])] for w in ws["workers"]
                        },
                        "received_over_shard": max(
                            w["bytes_received"] / shard[(0, w["rank"])] for w in ws["workers"]
                        ),
                    }
                )
    finally:
        for eng in engines.values():
            eng.close()
    summary = _summarise(rows)
    _print_table(summary, starts)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": "embedded tiny Llama (fp32, 4 layers, hidden 256, GQA 4:2, vocab 3999)",
        "bucket_bytes": bucket_bytes,
        "reps": args.reps,
        "engine_start_seconds": {str(k): v for k, v in starts.items()},
        "summary": summary,
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


def _summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["learner"], r["engine_tp"]) for r in rows})
    for learner, etp in keys:
        entry = {"learner": learner, "engine_tp": etp}
        for method in ("ours", "naive"):
            sel = [r for r in rows if (r["learner"], r["engine_tp"], r["method"]) == (learner, etp, method)]
            secs = sorted(r["seconds"] for r in sel)
            entry[method] = {
                "median_seconds": secs[len(secs) // 2],
                "min_seconds": secs[0],
                "max_seconds": secs[-1],
                "mib_received_per_vllm_rank": max(
                    max(r["bytes_received_per_vllm_rank"].values()) for r in sel
                )
                / 2**20,
                "received_over_shard": max(r["received_over_shard"] for r in sel),
            }
        entry["speedup"] = entry["naive"]["median_seconds"] / entry["ours"]["median_seconds"]
        out.append(entry)
    return out


def _print_table(summary: list[dict], starts: dict) -> None:
    head = (
        f"{'learner':10s} {'vLLM':5s} | {'ours s':>7s} {'MiB/rank':>9s} {'/shard':>6s} | "
        f"{'naive s':>7s} {'MiB/rank':>9s} {'/shard':>6s} | {'speedup':>7s}"
    )
    print(head)
    print("-" * len(head))
    for e in summary:
        o, n = e["ours"], e["naive"]
        print(
            f"{e['learner']:10s} TP{e['engine_tp']:<3d} | {o['median_seconds']:7.3f} {o['mib_received_per_vllm_rank']:9.2f} "
            f"{o['received_over_shard']:6.2f} | {n['median_seconds']:7.3f} {n['mib_received_per_vllm_rank']:9.2f} "
            f"{n['received_over_shard']:6.2f} | {e['speedup']:6.2f}x"
        )
    print("engine start: " + ", ".join(f"TP{k} {v:.1f} s" for k, v in starts.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["controller", "learner"], default="controller")
    p.add_argument("--learner", action="append", help="TPxPP (default: 2x1 and 1x2)")
    p.add_argument("--engine-tp", type=int, action="append", help="default: 1 and 2")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--bucket-mb", type=float, default=4.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", default=None)
    # learner role
    p.add_argument("--hf")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--engine", action="append")
    args = p.parse_args()
    args.bucket_bytes = int(args.bucket_mb * 2**20)
    if args.role == "learner":
        learner_main(args)
    else:
        args.learner = args.learner or ["2x1", "1x2"]
        args.engine_tp = args.engine_tp or [1, 2]
        controller_main(args)


if __name__ == "__main__":
    main()
