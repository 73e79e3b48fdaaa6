"""Throughput of the verifiable rewards and of decontamination.

    python benchmarks/bench_rewards.py [--items 10000] [--workers N] [--out bench_rewards.json]

Verifiers: items/s of `compute_rewards` (sandboxed, hard time limit on) on synthetic batches
mixing correct and wrong answers. Decontamination: training tokens/s streamed through the 8-gram
index at two training sizes, to show linear growth (time ~ tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

from megatron_tulu.rewards import compute_rewards
from megatron_tulu.rewards.ngram_overlap import EvalIndex, tokenize

_WORDS = (
    "apple river count number total each friend market sold bought half twice more less "
    "garden train blue quickly because after before during the a of to and in is was"
).split()


def _gsm8k_items(rng: random.Random, n: int) -> list[dict]:
    items = []
    for _ in range(n):
        gold = rng.randint(0, 100_000)
        answer = gold if rng.random() < 0.6 else gold + rng.randint(1, 9)
        steps = " ".join(
            f"{rng.randint(1, 99)} + {rng.randint(1, 99)} = {rng.randint(2, 198)}." for _ in range(4)
        )
        items.append(
            {
                "response": f"{steps} So the answer is {answer:,}.",
                "ground_truth": str(gold),
                "dataset": "gsm8k",
            }
        )
    return items


def _math_items(rng: random.Random, n: int) -> list[dict]:
    items = []
    for _ in range(n):
        p, q = rng.randint(1, 40), rng.randint(2, 40)
        kind = rng.random()
        if kind < 0.4:
            response, gold = rf"We get \boxed{{\frac{{{p}}}{{{q}}}}}.", rf"\frac{{{2 * p}}}{{{2 * q}}}"
        elif kind < 0.6:
            response, gold = (
                f"Final Answer: The final answer is ${p}$. I hope it is correct.",
                str(p + (kind < 0.5)),
            )
        elif kind < 0.8:
            response, gold = rf"so $x^2+{2 * p}x+{p * p}$", f"(x+{p})^2"
        else:
            response, gold = rf"\boxed{{{p}\sqrt{{{q}}}}}", rf"\sqrt{{{p * p * q}}}"
        items.append(
            {"response": "Let us think step by step. " + response, "ground_truth": gold, "dataset": "math"}
        )
    return items


def _ifeval_items(rng: random.Random, n: int) -> list[dict]:
    ground_truths = [
        {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
         "kwargs": [{}, {"num_words": 40, "relation": "at least"}]},
        {"instruction_id_list": ["length_constraints:number_sentences", "detectable_format:title"],
         "kwargs": [{"num_sentences": 5, "relation": "less than"}, {}]},
        {"instruction_id_list": ["change_case:english_lowercase", "keywords:existence"],
         "kwargs": [{}, {"keywords": ["river"]}]},
        {"instruction_id_list": ["detectable_format:number_bullet_lists", "startend:end_checker"],
         "kwargs": [{"num_bullets": 3}, {"end_phrase": "Any other questions?"}]},
    ]  # fmt: skip
    items = []
    for _ in range(n):
        sentences = [" ".join(rng.choices(_WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(6)]
        response = (
            "<<A Title>>\n" + "\n".join("* " + s for s in sentences[:3]) + "\n" + " ".join(sentences[3:])
        )
        if rng.random() < 0.5:
            response += " Any other questions?"
        if rng.random() < 0.3:  # exercises langdetect in change_case:english_lowercase
            response = response.lower()
        items.append({"response": response, "ground_truth": rng.choice(ground_truths), "dataset": "ifeval"})
    return items


def bench_verifiers(items: int, workers: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for name, make in (("gsm8k", _gsm8k_items), ("math", _math_items), ("ifeval", _ifeval_items)):
        batch = make(rng, items)
        compute_rewards(batch[:50], workers=workers)  # warm up workers and lazy imports
        start = time.perf_counter()
        results = compute_rewards(batch, workers=workers)
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "verifier": name,
                "items": items,
                "workers": workers,
                "seconds": round(elapsed, 3),
                "items_per_s": round(items / elapsed, 1),
                "accuracy": round(sum(r.score for r in results) / items, 4),
                "timeouts": sum(r.details.get("error") == "timeout" for r in results),
            }
        )
    return rows


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS + [f"w{i}" for i in range(5000)], k=words))


def bench_decontamination(train_tokens: list[int], eval_items: int = 1000) -> list[dict]:
    rng = random.Random(1)
    eval_texts = [_text(rng, 60) for _ in range(eval_items)]
    index = EvalIndex(ngram=8)
    for i, text in enumerate(eval_texts):
        index.add("eval", str(i), text)
    rows = []
    for target in train_tokens:
        docs = []
        tokens = 0
        while tokens < target:
            doc = _text(rng, 200)
            if rng.random() < 0.01:  # a few contaminated training rows
                doc += " " + rng.choice(eval_texts)
            docs.append(doc)
            tokens += len(tokenize(doc))
        start = time.perf_counter()
        matched = sum(bool(index.overlaps(doc)) for doc in docs)
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "train_tokens": tokens,
                "train_rows": len(docs),
                "eval_items": eval_items,
                "seconds": round(elapsed, 3),
                "tokens_per_s": round(tokens / elapsed),
                "rows_matched": matched,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--train-tokens", type=int, nargs=2, default=[500_000, 2_000_000])
    parser.add_argument("--out", default="bench_rewards.json")
    args = parser.parse_args()

    verifiers = bench_verifiers(args.items, args.workers)
    print(
        f"{'verifier':<8} {'items':>7} {'workers':>7} {'seconds':>8} {'items/s':>9} {'accuracy':>9} {'timeouts':>8}"
    )
    for row in verifiers:
        print(
            f"{row['verifier']:<8} {row['items']:>7} {row['workers']:>7} {row['seconds']:>8.2f} "
            f"{row['items_per_s']:>9.1f} {row['accuracy']:>9.4f} {row['timeouts']:>8}"
        )
    decontam = bench_decontamination(args.train_tokens)
    print(f"\n{'train tokens':>12} {'rows':>7} {'seconds':>8} {'tokens/s':>10} {'matched':>8}")
    for row in decontam:
        print(
            f"{row['train_tokens']:>12} {row['train_rows']:>7} {row['seconds']:>8.2f} "
            f"{row['tokens_per_s']:>10} {row['rows_matched']:>8}"
        )
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "verifiers": verifiers,
        "decontamination": decontam,
    }
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
