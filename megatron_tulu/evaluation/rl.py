"""The RL trainer's scoring and evaluation: rollouts scored by the verifiers (:func:`score_outputs`,
with the ``rlvr.*`` reward settings of :func:`scoring_options`), the greedy held-out evaluation
(:meth:`HeldOut.evaluate`), a batch's reward metrics and the run's curves."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.evaluation.prompts import encode_items
from megatron_tulu.evaluation.runner import EvalSettings
from megatron_tulu.evaluation.runner import evaluate as run_eval
from megatron_tulu.evaluation.tasks import read_task_files
from megatron_tulu.rewards import compute_rewards
from megatron_tulu.rollout.batch import RolloutSample
from megatron_tulu.rollout.fleet import EngineFleet

HELDOUT = Path(__file__).resolve().parents[1] / "assets" / "data" / "rlvr_heldout.jsonl"


def scoring_options(rl) -> dict[str, Any]:
    """The reward settings of ``rlvr.*`` as keywords of :func:`score_outputs` and of the evaluation
    loop (:func:`megatron_tulu.evaluation.evaluate`): training and held-out rewards alike."""
    return dict(
        alpha=rl.alpha,
        no_eos_penalty=rl.no_eos_penalty,
        workers=rl.reward_workers,
        strip_thinking=rl.strip_thinking,
        verifier_options={"gsm8k": {"rule": rl.gsm8k_rule}},
    )


def score_outputs(
    outs,
    prompts,
    tokenizer,
    alpha: float,
    no_eos_penalty: float,
    workers: int = 2,
    *,
    strip_thinking: bool = False,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[RolloutSample]:
    """Decode engine outputs and score them with the verifier registry (alpha, no-EOS penalty)."""
    texts = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
    rewards = compute_rewards(
        [
            {
                "response": t,
                "ground_truth": prompts[o.prompt_index]["ground_truth"],
                "dataset": prompts[o.prompt_index]["dataset"],
                "prompt": prompts[o.prompt_index]["prompt"],
                "finish_reason": o.finish_reason,
            }
            for o, t in zip(outs, texts)
        ],
        alpha=alpha,
        no_eos_penalty=no_eos_penalty,
        workers=workers,
        strip_thinking=strip_thinking,
        verifier_options=verifier_options,
    )
    return [
        RolloutSample(
            list(o.prompt_ids),
            list(o.token_ids),
            o.finish_reason,
            r.reward,
            r.score,
            r.dataset,
            o.prompt_index,
            list(o.logprobs),
        )
        for o, r in zip(outs, rewards)
    ]


def rollout_metrics(samples: Sequence[RolloutSample], prefix: str = "") -> dict[str, float]:
    """Mean reward and accuracy over the batch and per dataset, response length, no-EOS share."""
    out: dict[str, float] = {}
    by_ds: dict[str, list[RolloutSample]] = defaultdict(list)
    for s in samples:
        by_ds[s.dataset].append(s)
    for name, group in [("all", list(samples)), *sorted(by_ds.items())]:
        out[f"{prefix}reward/{name}"] = sum(s.score for s in group) / len(group)
        out[f"{prefix}accuracy/{name}"] = sum(s.correct >= 1.0 for s in group) / len(group)
    out[f"{prefix}response_length"] = sum(len(s.response_ids) for s in samples) / len(samples)
    out[f"{prefix}no_eos_share"] = sum(s.finish_reason != "stop" for s in samples) / len(samples)
    return out


@dataclass
class HeldOut:
    """The held-out RLVR prompts, read and encoded once by the one evaluation implementation."""

    items: list
    prompt_ids: list[list[int]]

    @classmethod
    def load(cls, cfg: RLVRRunConfig, tokenizer) -> HeldOut:
        files = cfg.rlvr.heldout_files or [str(HELDOUT)]
        items = read_task_files(files, "heldout", "rlvr")
        ids = encode_items(items, tokenizer, chat_template="tulu", max_prompt_len=cfg.rollout.max_prompt_len)
        return cls(items, ids)

    def evaluate(self, cfg: RLVRRunConfig, fleet: EngineFleet | None, tokenizer) -> dict[str, float]:
        """Greedy held-out verifiable reward/accuracy with the engines' current weights (driver
        only; {} elsewhere), through ``megatron-tulu eval``'s evaluation loop, scored as training."""
        if fleet is None:
            return {}
        settings = EvalSettings(max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.train.seed)
        run = run_eval(fleet, self.items, self.prompt_ids, tokenizer, settings, **scoring_options(cfg.rlvr))
        return run.rlvr_metrics("eval/")


def plot_curves(out_dir: Path) -> None:
    """PNG of the curves from metrics.jsonl (reward, accuracy, KL, held-out reward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ["reward/all", "eval/reward/all", "kl", "policy/loss", "response_length", "no_eos_share"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig)
