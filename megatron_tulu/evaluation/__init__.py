"""Evaluation: benchmark readers, prompt templates, the one generate-and-verify loop, pass@k /
maj@k / IFEval metrics, decontamination report, and the ``megatron-tulu eval`` command.

The RLVR trainer's in-loop held-out evaluation and the pipeline's per-stage scoring use the same
:func:`evaluate` as the command::

    items = read_task_files(["heldout.jsonl"], "heldout", "rlvr")
    ids = encode_items(items, tokenizer, chat_template="tulu", max_prompt_len=512)
    run = evaluate(engine, items, ids, tokenizer, EvalSettings(max_new_tokens=256))
    run.rlvr_metrics("eval/")   # {"eval/reward/all": ..., "eval/accuracy/gsm8k": ..., ...}
"""

from megatron_tulu.evaluation.metrics import maj_at_k, pass_at_k, rlvr_metrics, task_metrics
from megatron_tulu.evaluation.prompts import build_messages, encode_items
from megatron_tulu.evaluation.runner import EvalRun, EvalSettings, evaluate, score_texts
from megatron_tulu.evaluation.tasks import (
    EvalItem,
    TaskFileError,
    load_tasks,
    read_task_file,
    read_task_files,
)

__all__ = [
    "EvalItem",
    "EvalRun",
    "EvalSettings",
    "TaskFileError",
    "build_messages",
    "encode_items",
    "evaluate",
    "load_tasks",
    "maj_at_k",
    "pass_at_k",
    "read_task_file",
    "read_task_files",
    "rlvr_metrics",
    "score_texts",
    "task_metrics",
]
