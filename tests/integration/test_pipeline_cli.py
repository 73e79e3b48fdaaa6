"""`megatron-tulu pipeline` end to end on small slices of the shipped data (real Megatron + vLLM CPU).

The summary scores each stage with a fresh vLLM engine on the exported HF weights; the RLVR stage
scored the same held-out prompts in-run with the refit engine. Greedy decoding of bit-identical
weights must agree, so the two independent paths check the export and the refit against each other.
"""

import json
import sys

import pytest

from megatron_tulu.algorithms.pipeline import route_overrides
from tests.helpers import REPO, quiet_env, run_logged

ASSETS = REPO / "megatron_tulu" / "assets" / "data"


def test_overrides_are_routed_by_stage_prefix_and_shared_keys_reach_every_stage():
    out, stages = route_overrides(
        [
            "output_dir=/tmp/p",
            "sft.optimizer.lr=1e-3",
            "rlvr.rlvr.beta=0.1",
            "parallel.tp=2",
            "sft.sft.epochs=1",
        ]
    )
    assert out == "/tmp/p"
    # the embedded default (8 SFT epochs) comes first, so the user's sft.epochs=1 wins
    assert stages["sft"] == ["sft.epochs=8", "optimizer.lr=1e-3", "parallel.tp=2", "sft.epochs=1"]
    assert stages["dpo"] == ["parallel.tp=2"]
    assert stages["rlvr"] == ["rlvr.beta=0.1", "parallel.tp=2"]
    with pytest.raises(SystemExit, match="prefix it with sft., dpo. or rlvr."):
        route_overrides(["optimizer.lr=1e-3"])


def _head(name: str, n: int, dest) -> str:
    path = dest / f"{name}.jsonl"
    path.write_text("".join((ASSETS / f"{name}.jsonl").read_text().splitlines(keepends=True)[:n]))
    return str(path)


@pytest.mark.slow
@pytest.mark.vllm
def test_pipeline_runs_three_stages_and_scores_each(tmp_path):
    out = tmp_path / "pipe"
    args = [
        f"output_dir={out}",
        f"sft.data.train_files=[{_head('sft', 64, tmp_path)}]",
        "sft.sft.epochs=1",
        f"dpo.data.train_files=[{_head('dpo', 32, tmp_path)}]",
        f"rlvr.data.train_files=[{_head('rlvr', 16, tmp_path)}]",
        "rlvr.rlvr.dataset_weights.gsm8k=0.5",  # the slice: 9 GSM8K-style, 7 IFEval-style prompts
        f"rlvr.rlvr.heldout_files=[{_head('rlvr_heldout', 12, tmp_path)}]",
        "rlvr.rlvr.prompts_per_step=8",
        "rlvr.train.micro_batch_size=4",
        "rlvr.rlvr.ppo_epochs=1",
        "rlvr.rlvr.total_episodes=16",
        "rlvr.rlvr.eval_every=2",
        "rlvr.rollout.max_new_tokens=16",
        *[f"{s}.logging.progress_bar=false" for s in ("sft", "dpo", "rlvr")],
        *[f"{s}.logging.tensorboard=false" for s in ("sft", "dpo", "rlvr")],
    ]
    cmd = [sys.executable, "-m", "megatron_tulu.cli", "pipeline", *args]
    rc = run_logged(cmd, tmp_path / "pipeline.log", quiet_env(), 1200)
    text = (tmp_path / "pipeline.log").read_text()
    assert rc == 0, text[-4000:]
    assert "held-out verifiable results" in text
    assert "training prompts per dataset (in data -> used): gsm8k 9 -> 4, ifeval 7 -> 7" in text
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert list(stages) == ["sft", "dpo", "rlvr"]
    for row in stages.values():
        assert 0.0 <= row["accuracy/all"] <= 1.0 and row["minutes"] > 0
    assert (out / "rlvr" / "curves.png").is_file()
    in_run = [json.loads(line) for line in (out / "rlvr" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in in_run if "eval/reward/all" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for stage, ev in (("dpo", evals[0]), ("rlvr", evals[-1])):
        for key in ("reward/all", "accuracy/all", "response_length", "no_eos_share"):
            assert stages[stage][key] == pytest.approx(ev[f"eval/{key}"], abs=1e-9), (stage, key)
    # the paired comparison is over the same 12 held-out prompts the accuracies came from
    summary = json.loads((out / "summary.json").read_text())
    for key, (before, after) in (("dpo_vs_sft", ("sft", "dpo")), ("rlvr_vs_dpo", ("dpo", "rlvr"))):
        test = summary["paired"][key]
        delta = (stages[after]["accuracy/all"] - stages[before]["accuracy/all"]) * 12
        assert test["net"] == round(delta) and 0.0 < test["p_value"] <= 1.0, (key, test)
        assert f"{key}: {test['fixed']} held-out prompts fixed" in text
