"""Console table, results.json and the PNG comparing checkpoints."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# rows of the console table, in order, when present for some task
TABLE_KEYS = (
    "n",
    "accuracy",
    "macro_accuracy",
    "contaminated",
    "clean_n",
    "clean_accuracy",
    "prompt_level_strict",
    "prompt_level_loose",
    "instruction_level_strict",
    "instruction_level_loose",
    "no_eos_share",
    "empty_responses",
    "verifier_errors",
    "response_length",
)


def _keys(task: dict[str, Any]) -> list[str]:
    keys = [k for k in TABLE_KEYS if k in task]
    extra = sorted(
        (k for k in task if k.startswith(("pass@", "maj@"))),
        key=lambda k: (k.startswith("maj@"), int(k.split("@")[1])),
    )
    head = [k for k in keys if k in ("n", "accuracy", "macro_accuracy")]
    return head + extra + [k for k in keys if k not in head]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def format_table(models: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One block per task: a row per metric, a column per model."""
    labels = list(models)
    width = max(12, *(len(m) + 2 for m in labels))
    tasks = list(dict.fromkeys(t for m in models.values() for t in m))
    lines = []
    for task in tasks:
        keys = list(dict.fromkeys(k for m in models.values() if task in m for k in _keys(m[task])))
        lines.append(f"{task:<26}" + "".join(f"{m:>{width}}" for m in labels))
        for k in keys:
            cells = "".join(f"{_fmt(models[m].get(task, {}).get(k)):>{width}}" for m in labels)
            lines.append(f"  {k:<24}" + cells)
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Written to a temporary file and renamed: an interrupted run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, ensure_ascii=False, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def plot_comparison(models: dict[str, dict[str, dict[str, Any]]], out: str | os.PathLike) -> Path:
    """Grouped bars: per task, the headline accuracy (and pass@K / clean accuracy when measured)
    of every model, so checkpoints of a run or stages of the pipeline can be compared at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(models)
    tasks = list(dict.fromkeys(t for m in models.values() for t in m))
    metric_names: list[str] = ["accuracy"]
    for m in models.values():
        for t in m.values():
            top = [k for k in t if k.startswith("pass@")]
            if top:
                best = max(top, key=lambda k: int(k.split("@")[1]))
                if best not in metric_names:
                    metric_names.append(best)
            if "clean_accuracy" in t and "clean_accuracy" not in metric_names:
                metric_names.append("clean_accuracy")
    fig, axes = plt.subplots(1, len(metric_names), figsize=(4 + 2.2 * len(tasks) * len(metric_names), 4))
    axes = [axes] if len(metric_names) == 1 else list(axes)
    width = 0.8 / max(1, len(labels))
    for ax, metric in zip(axes, metric_names):
        for j, label in enumerate(labels):
            values = [models[label].get(t, {}).get(metric) or 0.0 for t in tasks]
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, values, width=width, label=label)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_ylim(0, 1)
        ax.set_title(metric)
    axes[0].set_ylabel("score")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
