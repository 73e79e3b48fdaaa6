"""`megatron-tulu eval`: evaluate HF directories or Megatron checkpoints on GSM8K, MATH, IFEval
(or any RLVR-format JSONL) with vLLM generation and the verifiable-reward verifiers.

    megatron-tulu eval --model HF_DIR|CKPT [--model ...] [--tasks gsm8k,math,ifeval[,name=path.jsonl]]
        [--samples N] [--n K --temperature T] [--max-new-tokens M] [--chat-template tulu|none|model]
        [--prompt-style tulu3|zero-shot] [--shots S] [--engine-tp N] [--out DIR]
        [--decontaminate-against train.jsonl ...] [--all-steps] [key=value overrides]

A Megatron checkpoint (a checkpoint root or one ``step_N`` directory) is exported to an HF
directory first (``convert mcore-to-hf`` in a child process; trailing ``key=value`` overrides such
as ``parallel.pp=2`` go to that export), then served by a fresh vLLM engine. ``--all-steps``
evaluates every saved step of a checkpoint root. Per-task table on the console; with ``--out``:
``results.json`` (settings, per model and task the metrics and per-sample records, the
contamination report), ``<model>/generations.jsonl`` (the input format of ``megatron-tulu
verify``) and ``comparison.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from megatron_tulu.evaluation.prompts import CHAT_TEMPLATES, STYLES
from megatron_tulu.evaluation.tasks import TaskFileError


class EvalUsageError(ValueError):
    """A user mistake (bad path, option or file); printed as one ``error:`` line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megatron-tulu eval", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", action="append", required=True, help="HF dir or Megatron checkpoint (repeatable)"
    )
    p.add_argument("--tasks", default="gsm8k,math,ifeval", help="comma list: shipped name or name=path.jsonl")
    p.add_argument("--samples", type=int, default=None, help="first N items of each task")
    p.add_argument("--n", type=int, default=1, help="samples per item (pass@k / maj@k for k <= n)")
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy) for n=1, else 1.0")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument(
        "--max-prompt-len", type=int, default=None, help="left-truncate prompts to this many tokens"
    )
    p.add_argument("--chat-template", choices=CHAT_TEMPLATES, default="tulu")
    p.add_argument("--prompt-style", choices=STYLES, default="tulu3", help="tulu3: 8-shot GSM8K, 4-shot MATH")
    p.add_argument("--shots", type=int, default=None, help="override the exemplar count (GSM8K, MATH)")
    p.add_argument("--engine-tp", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--dtype", default=None, help="engine dtype (default float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--memory-fraction", type=float, default=0.2, help="vLLM gpu_memory_utilization")
    p.add_argument(
        "--kv-cache-gb", type=float, default=None, help="explicit KV-cache size (overrides the fraction)"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size", type=int, default=64, help="prompts per engine call (progress granularity)"
    )
    p.add_argument("--workers", type=int, default=None, help="verifier worker processes (default: cores)")
    p.add_argument("--time-limit", type=float, default=None, help="hard verifier limit per sample, s")
    p.add_argument("--out", default=None, help="write results.json, generations, comparison.png here")
    p.add_argument("--decontaminate-against", nargs="+", default=None, metavar="TRAIN", help="training files")
    p.add_argument("--clean-only", action="store_true", help="headline numbers on the clean subset only")
    p.add_argument("--all-steps", action="store_true", help="every saved step of a checkpoint root")
    p.add_argument("--no-progress", action="store_true")
    return p


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_models(paths: list[str], all_steps: bool) -> list[tuple[str, Path, bool]]:
    """[(label, path, is_megatron_checkpoint)], labels unique."""
    from megatron_tulu.engine.checkpoint import META, find_latest

    found: list[tuple[str, Path, bool]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise EvalUsageError(f"--model {raw}: no such directory")
        if _is_hf_dir(path):
            found.append((path.name or str(path), path, False))
            continue
        if (path / META).is_file():
            found.append((f"{path.parent.name}@{path.name}", path, True))
            continue
        if find_latest(path) is not None:
            steps = sorted(p for p in path.glob("step_*") if (p / META).is_file())
            if all_steps:
                found += [(f"{path.name}@{s.name}", s, True) for s in steps]
            else:
                found.append((path.name, path, True))
            continue
        raise EvalUsageError(
            f"--model {raw}: neither an HF model directory (config.json) nor a megatron-tulu checkpoint"
        )
    # the same directory name under different runs (outputs/demo/sft/hf, outputs/demo/dpo/hf): name
    # each by its parent too ("sft-hf", "dpo-hf"); a numbered suffix only if that still collides
    parents: dict[str, set[str]] = {}
    for label, path, _ in found:
        parents.setdefault(label, set()).add(path.parent.name)
    found = [
        (f"{path.parent.name}-{label}" if len(parents[label]) > 1 else label, path, ckpt)
        for label, path, ckpt in found
    ]
    labels: list[str] = []
    out = []
    for label, path, ckpt in found:
        name, k = label, 2
        while name in labels:
            name, k = f"{label}_{k}", k + 1
        labels.append(name)
        out.append((name, path, ckpt))
    return out


def export_checkpoint(ckpt: Path, dest: Path, tokenizer: str | None, overrides: list[str]) -> Path:
    """Megatron checkpoint -> HF directory through ``convert mcore-to-hf`` in a child process (its
    own torch.distributed world of one, gone before vLLM starts)."""
    cmd = [
        sys.executable,
        "-m",
        "megatron_tulu.cli",
        "convert",
        "mcore-to-hf",
        "--ckpt",
        str(ckpt),
        "--out",
        str(dest),
    ]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    proc = subprocess.run([*cmd, *overrides], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise EvalUsageError(f"--model {ckpt}: export to HF failed: {tail[0]}")
    return dest


def _eval_model(hf_dir: Path, tasks: dict[str, list], args: argparse.Namespace, label: str):
    import torch

    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.evaluation.prompts import encode_items
    from megatron_tulu.evaluation.runner import EvalSettings, evaluate
    from megatron_tulu.rollout.engine import RolloutEngine

    tokenizer = load_tokenizer(args.tokenizer or hf_dir)
    items = [it for task_items in tasks.values() for it in task_items]
    try:
        ids = encode_items(
            items,
            tokenizer,
            chat_template=args.chat_template,
            style=args.prompt_style,
            shots=args.shots,
            max_prompt_len=args.max_prompt_len,
        )
    except ValueError as exc:
        raise EvalUsageError(str(exc)) from None
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    settings = EvalSettings(
        n=args.n,
        temperature=temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    longest = max(len(x) for x in ids)
    with RolloutEngine(
        hf_dir,
        tp=args.engine_tp,
        dtype=dtype,
        seed=args.seed,
        memory_fraction=args.memory_fraction,
        kv_cache_bytes=None if args.kv_cache_gb is None else int(args.kv_cache_gb * (1 << 30)),
        max_model_len=longest + args.max_new_tokens + 8,
    ) as engine:
        run = evaluate(
            engine,
            items,
            ids,
            tokenizer,
            settings,
            workers=args.workers,
            time_limit=args.time_limit,
            progress=not args.no_progress,
            desc=label,
        )
    return run, settings


def run_eval(argv: list[str]) -> dict[str, Any]:
    from megatron_tulu.cli_args import parse_flags_and_overrides
    from megatron_tulu.evaluation.contamination import contamination_report, format_contamination
    from megatron_tulu.evaluation.tasks import load_tasks

    args, overrides = parse_flags_and_overrides(_parser(), argv)
    if args.n < 1 or (args.samples is not None and args.samples < 1) or args.max_new_tokens < 1:
        raise EvalUsageError("--n, --samples and --max-new-tokens must be >= 1")
    if args.n > 1 and args.temperature == 0:
        raise EvalUsageError("--n > 1 needs --temperature > 0 (greedy samples would all be equal)")
    tasks = load_tasks(args.tasks)
    if args.samples is not None:
        tasks = {name: items[: args.samples] for name, items in tasks.items()}
    models = resolve_models(args.model, args.all_steps)
    contamination = None
    if args.decontaminate_against:
        contamination = contamination_report(tasks, args.decontaminate_against)
        print(format_contamination(contamination))
    out = Path(args.out) if args.out else None
    # without --out, exported checkpoints live in a temporary directory removed at the end
    export_root = Path(tempfile.mkdtemp(prefix="mt_eval_export_")) if out is None else out / "exports"
    try:
        return _evaluate_models(args, overrides, tasks, models, contamination, out, export_root)
    finally:
        if out is None:
            shutil.rmtree(export_root, ignore_errors=True)


def _evaluate_models(
    args: argparse.Namespace,
    overrides: list[str],
    tasks: dict[str, list],
    models: list[tuple[str, Path, bool]],
    contamination: dict[str, Any] | None,
    out: Path | None,
    export_root: Path,
) -> dict[str, Any]:
    from megatron_tulu.evaluation.metrics import task_metrics
    from megatron_tulu.evaluation.report import format_table, plot_comparison, write_json, write_jsonl

    results: dict[str, Any] = {}
    table: dict[str, dict[str, dict[str, Any]]] = {}
    settings = None
    for label, path, is_ckpt in models:
        hf_dir = export_checkpoint(path, export_root / label, args.tokenizer, overrides) if is_ckpt else path
        run, settings = _eval_model(hf_dir, tasks, args, label)
        per_task: dict[str, Any] = {}
        for task in run.tasks():
            metrics = task_metrics(run.task_records(task))
            if contamination is not None:
                dirty = set(contamination["contaminated"][task])
                clean = {it.index for it in tasks[task]} - dirty
                metrics["contaminated"] = len(dirty)
                clean_metrics = task_metrics(run.task_records(task, keep=clean)) if clean else {"n": 0}
                metrics["clean"] = clean_metrics
                metrics["clean_n"] = clean_metrics["n"]
                metrics["clean_accuracy"] = clean_metrics.get("accuracy")
            per_task[task] = metrics
        shown = {
            t: (
                {**m["clean"], "clean_n": m["clean_n"], "n_all": m["n"]}
                if args.clean_only and "clean" in m
                else m
            )
            for t, m in per_task.items()
        }
        table[label] = {t: {k: v for k, v in m.items() if not isinstance(v, dict)} for t, m in shown.items()}
        results[label] = {
            "path": str(path),
            "hf_dir": str(hf_dir),
            "tasks": {t: {**m, "samples": run.task_records(t)} for t, m in per_task.items()},
        }
        if out is not None:
            write_jsonl(
                out / label / "generations.jsonl",
                [
                    {
                        k: r[k]
                        for k in (
                            "task",
                            "index",
                            "sample",
                            "prompt",
                            "response",
                            "ground_truth",
                            "dataset",
                            "finish_reason",
                        )
                    }
                    for r in run.records
                ],
            )
    print(format_table(table))
    summary = {
        "settings": {
            "tasks": args.tasks,
            "samples": args.samples,
            "n": args.n,
            "temperature": settings.temperature if settings else None,
            "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens,
            "chat_template": args.chat_template,
            "prompt_style": args.prompt_style,
            "shots": args.shots,
            "engine_tp": args.engine_tp,
            "seed": args.seed,
        },
        "models": results,
    }
    if contamination is not None:
        summary["contamination"] = contamination
    if out is not None:
        write_json(out / "results.json", summary)
        png = plot_comparison(table, out / "comparison.png")
        print(f"results: {out / 'results.json'}; plot: {png}")
    return summary


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        _parser().print_help()
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_eval(argv)
    except (TaskFileError, EvalUsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
