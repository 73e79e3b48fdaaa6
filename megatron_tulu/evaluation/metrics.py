"""Evaluation metrics: pass@k and maj@k from K samples, IFEval prompt/instruction levels, and the
RLVR trainer's ``eval/...`` names, all computed from per-sample records.

A record is one generated sample (see :mod:`megatron_tulu.evaluation.runner`): ``index`` (the
item), ``sample``, ``dataset``, ``reward``, ``score`` (verifier score, default options),
``correct`` (the task's headline verdict), ``answer`` (a canonical final answer or None),
``finish_reason``, ``num_tokens`` and, for IFEval items, ``verification`` /
``verification_loose`` with per-instruction verdicts.

pass@k and maj@k are the unbiased estimates from n >= k samples per item: the expected value,
over all k-subsets of the n samples, of "some sample is correct" (pass@k, Chen et al. 2021's
closed form) and of "the most frequent answer is correct" (maj@k; a tie between the top answers
counts as the correct share of the tied answers, a sample without an extracted answer votes for
nothing but itself). Both equal brute-force enumeration over the subsets (tested).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from decimal import Decimal, InvalidOperation
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """Expected majority-vote correctness over all k-subsets of the samples (exact, no sampling).

    Samples with the same answer form a group (correct if any member was verified correct; they
    agree unless a verifier accepts different spellings); a sample whose answer is None is a
    group of its own. Dynamic programme over groups with state (samples taken, largest group
    count, groups at that count, correct groups at that count), weighted by the number of subsets.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"{n} answers but {len(correct)} verdicts")
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n (n={n}, k={k})")
    groups: dict[Any, list[int]] = {}
    for i, (answer, ok) in enumerate(zip(answers, correct)):
        key = ("__single__", i) if answer is None else ("answer", answer)
        size, good = groups.get(key, [0, 0])
        groups[key] = [size + 1, int(good or bool(ok))]
    states: dict[tuple[int, int, int, int], int] = {(0, 0, 0, 0): 1}
    for size, good in groups.values():
        nxt: dict[tuple[int, int, int, int], int] = defaultdict(int)
        for (taken, top, tied, tied_good), ways in states.items():
            for x in range(0, min(size, k - taken) + 1):
                weight = ways * comb(size, x)
                if x == 0 or x < top:
                    state = (taken + x, top, tied, tied_good)
                elif x == top:
                    state = (taken + x, top, tied + 1, tied_good + good)
                else:
                    state = (taken + x, x, 1, good)
                nxt[state] += weight
        states = nxt
    total = sum(ways * tied_good / tied for (taken, _, tied, tied_good), ways in states.items() if taken == k)
    return total / comb(n, k)


def canonical_answer(dataset: str, details: dict[str, Any]) -> str | None:
    """The final answer a verifier extracted, in a form where equal answers compare equal
    (for maj@k). None when the verifier found no answer or has no notion of one (IFEval)."""
    if dataset == "gsm8k":
        extracted = details.get("extracted")
        if extracted is None:
            return None
        try:
            value = Decimal(extracted)
        except InvalidOperation:
            return str(extracted)
        return format(value.normalize(), "f") if value != 0 else "0"
    if dataset == "math":
        from megatron_tulu.rewards.math_normalize import hendrycks_normalize

        for candidate in details.get("candidates") or []:
            if candidate.get("source") != "raw" and candidate.get("answer"):
                return hendrycks_normalize(candidate["answer"]) or candidate["answer"]
        return None
    return None


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def _ifeval_levels(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode, key in (("strict", "verification"), ("loose", "verification_loose")):
        prompts = [r[key] for r in records if key in r and "instructions" in r[key]]
        if not prompts:
            continue
        verdicts = [i["followed"] for p in prompts for i in p["instructions"]]
        out[f"prompt_level_{mode}"] = sum(
            all(i["followed"] for i in p["instructions"]) for p in prompts
        ) / len(prompts)
        out[f"instruction_level_{mode}"] = sum(verdicts) / len(verdicts)
    return out


def group_by_item(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_item[r["index"]].append(r)
    return [sorted(by_item[i], key=lambda r: r["sample"]) for i in sorted(by_item)]


def task_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-task numbers from its records: n, accuracy (mean pass@1 over items), pass@k, maj@k,
    IFEval levels, mean verifier score and reward, no-EOS share, empty responses, response length."""
    items = group_by_item(records)
    if not items:
        return {"n": 0}
    samples = min(len(s) for s in items)
    out: dict[str, Any] = {"n": len(items), "samples_per_item": samples}
    out["accuracy"] = sum(sum(r["correct"] for r in s) / len(s) for s in items) / len(items)
    subjects: dict[str, list[float]] = defaultdict(list)
    for s in items:
        if s[0].get("subject"):
            subjects[s[0]["subject"]].append(sum(r["correct"] for r in s) / len(s))
    if subjects:  # MATH's headline in Tülu 3: the mean of the per-subject accuracies
        out["by_subject"] = {name: sum(v) / len(v) for name, v in sorted(subjects.items())}
        out["macro_accuracy"] = sum(out["by_subject"].values()) / len(subjects)
    if samples > 1:
        for k in ks_for(samples):
            out[f"pass@{k}"] = sum(
                pass_at_k(len(s), sum(bool(r["correct"]) for r in s), k) for s in items
            ) / len(items)
        if any(r.get("answer") is not None for r in records):
            for k in ks_for(samples):
                out[f"maj@{k}"] = sum(
                    maj_at_k([r.get("answer") for r in s], [bool(r["correct"]) for r in s], k) for s in items
                ) / len(items)
    out.update(_ifeval_levels(records))
    n = len(records)
    out["mean_score"] = sum(r["score"] for r in records) / n
    out["mean_reward"] = sum(r["reward"] for r in records) / n
    out["no_eos_share"] = sum(r["finish_reason"] != "stop" for r in records) / n
    out["empty_responses"] = sum(not r["response"].strip() for r in records)
    out["verifier_errors"] = sum("error" in (r.get("verification") or {}) for r in records)
    out["response_length"] = sum(r["num_tokens"] for r in records) / n
    datasets = sorted({r["dataset"] for r in records})
    if len(datasets) > 1:
        out["by_dataset"] = {
            d: sum(r["correct"] for r in records if r["dataset"] == d)
            / sum(r["dataset"] == d for r in records)
            for d in datasets
        }
    return out


def rlvr_metrics(records: Sequence[dict[str, Any]], prefix: str = "") -> dict[str, float]:
    """The RLVR trainer's held-out metric names (``{prefix}reward/all``, ``{prefix}accuracy/<dataset>``,
    ``{prefix}response_length``, ``{prefix}no_eos_share``): reward = assembled RLVR reward (alpha *
    score, or the no-EOS penalty), accuracy = verifier score >= 1 with default verifier options."""
    if not records:
        raise ValueError("rlvr_metrics: no records")
    out: dict[str, float] = {}
    by_ds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_ds[r["dataset"]].append(r)
    for name, group in [("all", list(records)), *sorted(by_ds.items())]:
        out[f"{prefix}reward/{name}"] = sum(r["reward"] for r in group) / len(group)
        out[f"{prefix}accuracy/{name}"] = sum(r["score"] >= 1.0 for r in group) / len(group)
    out[f"{prefix}response_length"] = sum(r["num_tokens"] for r in records) / len(records)
    out[f"{prefix}no_eos_share"] = sum(r["finish_reason"] != "stop" for r in records) / len(records)
    return out
