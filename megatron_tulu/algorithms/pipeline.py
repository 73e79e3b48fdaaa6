"""`megatron-tulu pipeline`: SFT -> DPO -> RLVR on one model, with held-out verifiable accuracy
after every stage (greedy vLLM generations scored by the verifiers) and the curves PNG.

Stage configs come from hydra_conf/{sft,dpo,rlvr}.yaml; overrides are routed by prefix:
``sft.<key>=v``, ``dpo.<key>=v``, ``rlvr.<key>=v`` go to that stage's config (e.g.
``sft.train.train_iters=10``, ``rlvr.rlvr.prompts_per_step=32``); ``model.*``, ``parallel.*`` and
``precision.*`` go to every stage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from megatron_tulu.algorithms.loop import is_rank0
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import DPORunConfig, RLVRRunConfig, SFTRunConfig

STAGES = (("sft", SFTRunConfig), ("dpo", DPORunConfig), ("rlvr", RLVRRunConfig))
SHARED = ("model.", "parallel.", "precision.", "model=", "parallel=")


def route_overrides(argv: list[str]) -> tuple[str, dict[str, list[str]]]:
    out_dir, per_stage = "outputs/pipeline", {name: [] for name, _ in STAGES}
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


def evaluate_hf(hf_dir: str, heldout_file: str, max_new_tokens: int, seed: int = 0) -> dict[str, float]:
    """Greedy held-out generations of an HF model in vLLM, scored by the verifiers."""
    from megatron_tulu.algorithms.rlvr import load_prompts, rollout_metrics, score_outputs
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.rewards import DEFAULT_ALPHA, DEFAULT_NO_EOS_PENALTY
    from megatron_tulu.rollout.engine import RolloutEngine, SamplingSettings

    tokenizer = load_tokenizer(hf_dir)
    prompts = load_prompts([heldout_file], tokenizer, 512)
    with RolloutEngine(
        hf_dir, tp=1, dtype="float32", seed=seed, memory_fraction=0.2, max_model_len=1024
    ) as engine:
        outs = engine.generate(
            [p["ids"] for p in prompts],
            SamplingSettings(
                temperature=0.0,
                max_new_tokens=max_new_tokens,
                seed=seed,
                stop_token_ids=(tokenizer.eos_token_id,),
            ),
        )
    samples = score_outputs(outs, prompts, tokenizer, DEFAULT_ALPHA, DEFAULT_NO_EOS_PENALTY)
    return rollout_metrics(samples)


def run_pipeline(argv: list[str]) -> dict[str, Any]:
    from megatron_tulu.algorithms.dpo import train_dpo
    from megatron_tulu.algorithms.rlvr import ASSETS, train_rlvr
    from megatron_tulu.algorithms.sft import train_sft

    out_dir, per_stage = route_overrides(argv)
    root = Path(out_dir)
    sft_cfg = load_config(
        [f"train.output_dir={root / 'sft'}", *per_stage["sft"]], config_name="sft", schema=SFTRunConfig
    )
    train_sft(sft_cfg)
    sft_hf = str(root / "sft" / "hf")
    dpo_cfg = load_config(
        [f"train.output_dir={root / 'dpo'}", f"model.hf_path={sft_hf}", *per_stage["dpo"]],
        config_name="dpo",
        schema=DPORunConfig,
    )
    train_dpo(dpo_cfg)
    dpo_hf = str(root / "dpo" / "hf")
    rlvr_cfg = load_config(
        [f"train.output_dir={root / 'rlvr'}", f"model.hf_path={dpo_hf}", *per_stage["rlvr"]],
        config_name="rlvr",
        schema=RLVRRunConfig,
    )
    rlvr_summary = train_rlvr(rlvr_cfg)
    heldout = (rlvr_cfg.rlvr.heldout_files or [str(ASSETS / "rlvr_heldout.jsonl")])[0]
    rows = {}
    if is_rank0():
        n = rlvr_cfg.rollout.max_new_tokens
        rows = {
            "sft": evaluate_hf(sft_hf, heldout, n),
            "dpo": evaluate_hf(dpo_hf, heldout, n),
            "rlvr": evaluate_hf(rlvr_summary["hf_export"], heldout, n),
        }
        (root / "summary.json").write_text(json.dumps(rows, indent=2))
        print_table(rows)
    return rows


def print_table(rows: dict[str, dict[str, float]]) -> None:
    keys = [
        k
        for k in next(iter(rows.values()))
        if k.startswith(("accuracy/", "reward/")) or k in ("no_eos_share", "response_length")
    ]
    print("\nheld-out verifiable results (greedy)")
    print(f"{'metric':<24}" + "".join(f"{s:>10}" for s in rows))
    for k in keys:
        print(f"{k:<24}" + "".join(f"{rows[s][k]:>10.3f}" for s in rows))


def main(argv: list[str]) -> int:
    """`megatron-tulu pipeline [output_dir=DIR] [sft.|dpo.|rlvr.<override> ...]`: SFT -> DPO -> RLVR."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    run_pipeline(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
