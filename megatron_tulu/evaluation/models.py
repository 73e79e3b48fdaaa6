"""Evaluate models on tasks: which directories are models, Megatron checkpoints exported to HF
first, a fresh vLLM engine per model, metrics per task (and on the clean subset when a
contamination report is given). ``megatron-tulu eval`` (:mod:`megatron_tulu.commands.eval`)
parses its options into :class:`ModelEvalOptions` and prints what :func:`evaluate_models` returns.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.evaluation.runner import EvalRun, EvalSettings


class EvalUsageError(ValueError):
    """A user mistake (bad path, option or file); printed as one ``error:`` line."""


@dataclass(frozen=True)
class ModelEvalOptions:
    """Prompting, decoding, engine and verifier options of one evaluation (``megatron-tulu eval``'s
    flags of the same names)."""

    n: int = 1
    temperature: float | None = None  # None: 0 (greedy) for n=1, else 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    max_prompt_len: int | None = None
    chat_template: str = "tulu"
    prompt_style: str = "tulu3"
    shots: int | None = None
    engine_tp: int = 1
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on GPU
    memory_fraction: float = 0.2
    kv_cache_gb: float | None = None
    tokenizer: str | None = None
    seed: int = 0
    batch_size: int = 64
    workers: int | None = None
    time_limit: float | None = None
    clean_only: bool = False
    progress: bool = True

    def settings(self) -> EvalSettings:
        temperature = self.temperature if self.temperature is not None else (0.0 if self.n == 1 else 1.0)
        return EvalSettings(
            n=self.n,
            temperature=temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            batch_size=self.batch_size,
        )


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


def evaluate_model(
    hf_dir: Path, tasks: dict[str, list], opts: ModelEvalOptions, label: str
) -> tuple[EvalRun, EvalSettings]:
    """Every item of ``tasks`` on a fresh vLLM engine serving ``hf_dir``."""
    import torch

    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.evaluation.prompts import encode_items
    from megatron_tulu.evaluation.runner import evaluate
    from megatron_tulu.rollout.engine import RolloutEngine

    tokenizer = load_tokenizer(opts.tokenizer or hf_dir)
    items = [it for task_items in tasks.values() for it in task_items]
    try:
        ids = encode_items(
            items,
            tokenizer,
            chat_template=opts.chat_template,
            style=opts.prompt_style,
            shots=opts.shots,
            max_prompt_len=opts.max_prompt_len,
        )
    except ValueError as exc:
        raise EvalUsageError(str(exc)) from None
    settings = opts.settings()
    dtype = opts.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    longest = max(len(x) for x in ids)
    with RolloutEngine(
        hf_dir,
        tp=opts.engine_tp,
        dtype=dtype,
        seed=opts.seed,
        memory_fraction=opts.memory_fraction,
        kv_cache_bytes=None if opts.kv_cache_gb is None else int(opts.kv_cache_gb * (1 << 30)),
        max_model_len=longest + opts.max_new_tokens + 8,
    ) as engine:
        run = evaluate(
            engine,
            items,
            ids,
            tokenizer,
            settings,
            workers=opts.workers,
            time_limit=opts.time_limit,
            progress=opts.progress,
            desc=label,
        )
    return run, settings


_GENERATION_FIELDS = (
    "task",
    "index",
    "sample",
    "prompt",
    "response",
    "ground_truth",
    "dataset",
    "finish_reason",
)


def evaluate_models(
    models: list[tuple[str, Path, bool]],
    tasks: dict[str, list],
    opts: ModelEvalOptions,
    *,
    overrides: list[str],
    contamination: dict[str, Any] | None,
    out: Path | None,
    export_root: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, Any]]], EvalSettings | None]:
    """Evaluate each of :func:`resolve_models`' models (checkpoints exported under ``export_root``
    first, with ``overrides`` for that export). Returns (per model its paths and per task the
    metrics and per-sample records; the table of scalar metrics per model and task; the decoding
    settings used). With ``out``, each model's ``<label>/generations.jsonl`` is written there (the
    input format of ``megatron-tulu verify``)."""
    from megatron_tulu.evaluation.metrics import task_metrics
    from megatron_tulu.evaluation.report import write_jsonl

    results: dict[str, Any] = {}
    table: dict[str, dict[str, dict[str, Any]]] = {}
    settings = None
    for label, path, is_ckpt in models:
        hf_dir = export_checkpoint(path, export_root / label, opts.tokenizer, overrides) if is_ckpt else path
        run, settings = evaluate_model(hf_dir, tasks, opts, label)
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
                if opts.clean_only and "clean" in m
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
                [{k: r[k] for k in _GENERATION_FIELDS} for r in run.records],
            )
    return results, table, settings
