"""Per-dataset weights for a prompt or example list (the role of open-instruct's dataset mixer).

``weights[name]`` scales how many rows of dataset ``name`` a run uses: ``1.0`` keeps them all,
``0.25`` keeps the first quarter (in file order, so the choice is reproducible), ``2.0`` repeats
every row twice, ``0`` drops the dataset. Datasets not named keep weight 1. Naming a dataset that
is not in the data is an error: a typo would otherwise silently leave the mix unchanged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def apply_dataset_weights(
    rows: Sequence[dict[str, Any]], weights: Mapping[str, float] | None, key: str = "dataset"
) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """The reweighted rows (datasets interleaved in their original order) and, per dataset,
    ``(rows available, rows used)`` for the run log."""
    counts = Counter(row[key] for row in rows)
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(counts))
    if unknown:
        raise ValueError(
            f"dataset weights name {unknown}, which are not in the data (datasets: {sorted(counts)})"
        )
    bad = {name: w for name, w in weights.items() if not (isinstance(w, int | float) and w >= 0)}
    if bad:
        raise ValueError(f"dataset weights must be numbers >= 0, got {bad}")
    used = {name: math.floor(n * weights.get(name, 1.0) + 1e-9) for name, n in counts.items()}
    seen: Counter[str] = Counter()
    out: list[dict[str, Any]] = []
    passes = max((-(-used[name] // counts[name]) for name in counts), default=0)  # no rows: no passes
    for _ in range(passes):
        for row in rows:
            name = row[key]
            if seen[name] < used[name]:
                seen[name] += 1
                out.append(row)
    return out, {name: (counts[name], used[name]) for name in sorted(counts)}
