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
verify``) and ``comparison.png``. The evaluation itself: :mod:`megatron_tulu.evaluation.models`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from megatron_tulu.commands._args import parse_flags_and_overrides
from megatron_tulu.evaluation.models import EvalUsageError, ModelEvalOptions, evaluate_models, resolve_models
from megatron_tulu.evaluation.prompts import CHAT_TEMPLATES, STYLES
from megatron_tulu.evaluation.tasks import TaskFileError


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


def _options(args: argparse.Namespace) -> ModelEvalOptions:
    """The flags of ModelEvalOptions' field names (``--no-progress`` reads as ``progress``)."""
    names = [f.name for f in dataclasses.fields(ModelEvalOptions) if f.name != "progress"]
    return ModelEvalOptions(**{name: getattr(args, name) for name in names}, progress=not args.no_progress)


def run_eval(argv: list[str]) -> dict[str, Any]:
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
        return _evaluate(args, overrides, tasks, models, contamination, out, export_root)
    finally:
        if out is None:
            shutil.rmtree(export_root, ignore_errors=True)


def _evaluate(
    args: argparse.Namespace,
    overrides: list[str],
    tasks: dict[str, list],
    models: list[tuple[str, Path, bool]],
    contamination: dict[str, Any] | None,
    out: Path | None,
    export_root: Path,
) -> dict[str, Any]:
    from megatron_tulu.evaluation.report import format_table, plot_comparison, write_json

    results, table, settings = evaluate_models(
        models,
        tasks,
        _options(args),
        overrides=overrides,
        contamination=contamination,
        out=out,
        export_root=export_root,
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
