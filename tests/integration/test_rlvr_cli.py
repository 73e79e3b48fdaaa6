"""RLVR end to end with a real vLLM CPU engine: sync vs async staleness, kill -9 + exact resume."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, full_set_only, quiet_env, run_logged, torchrun_cmd

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ASSETS = REPO / "megatron_tulu" / "assets" / "data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlvr")
    subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(root / "tiny")],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join((ASSETS / "rlvr_heldout.jsonl").read_text().splitlines(keepends=True)[:8]))
    return root


def _rlvr(setup, out, *extra, fault=None):
    env = quiet_env(VLLM_LOGGING_LEVEL="WARNING")
    if fault:
        env["MEGATRON_TULU_FAULT"] = fault
    args = [
        f"train.output_dir={out}",
        f"model.hf_path={setup / 'tiny'}",
        "rlvr.prompts_per_step=8",
        "train.micro_batch_size=4",
        "rollout.max_new_tokens=16",
        "rlvr.ppo_epochs=1",
        "rlvr.total_episodes=32",
        "rlvr.eval_every=0",
        f"rlvr.heldout_files=[{setup / 'heldout.jsonl'}]",
        "checkpoint.save_interval=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "optimizer.lr=1e-4",
        *extra,
    ]
    cmd = [*torchrun_cmd(1, "-m", "megatron_tulu.cli", "rlvr"), *args]
    return run_logged(cmd, out.parent / f"{out.name}.log", env, 900)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_sync_and_async_staleness(setup, tmp_path):
    sync, asyn = tmp_path / "sync", tmp_path / "async"
    assert _rlvr(setup, sync) == 0, (tmp_path / "sync.log").read_text()[-3000:]
    assert _rlvr(setup, asyn, "rlvr.async_mode=true") == 0, (tmp_path / "async.log").read_text()[-3000:]
    steps = lambda rows: [r for r in rows if r["step"] > 0]  # noqa: E731
    assert [r["rollout/staleness"] for r in steps(_rows(sync))] == [0, 0, 0, 0]  # on-policy
    assert [r["rollout/staleness"] for r in steps(_rows(asyn))] == [0, 1, 1, 1]  # second-latest batch
    assert (sync / "curves.png").is_file() and (sync / "hf" / "model.safetensors").is_file()
    first = steps(_rows(sync))[0]
    for key in (
        "reward/all",
        "kl",
        "entropy",
        "policy/loss",
        "value/loss",
        "policy/clip_fraction",
        "no_eos_share",
        "response_length",
        "refit_bytes_over_shard_max",
        # the step's named, timed phases
        "time/generate",
        "time/score",
        "time/log_probs",
        "time/advantages",
        "time/update",
        "time/generate_wait",
        "time/refit",
    ):
        assert key in first, key


@pytest.mark.parametrize(
    "mode",
    [
        # async resumes strictly more (the pending batch too); sync runs with the fault set
        pytest.param(
            "sync",
            marks=full_set_only("FAULTS"),
        ),
        "async",
    ],
)
def test_kill9_then_resume_is_exact(setup, tmp_path, mode):
    extra = ["rlvr.async_mode=true"] if mode == "async" else []
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert _rlvr(setup, straight, *extra) == 0
    assert _rlvr(setup, crashed, *extra, fault="kill_after_step:2") != 0
    assert [r["step"] for r in _rows(crashed)] == [0, 1, 2]
    assert _rlvr(setup, crashed, *extra, "checkpoint.resume=true") == 0, (
        tmp_path / "crashed.log"
    ).read_text()[-3000:]
    keys = (
        "step",
        "reward/all",
        "kl",
        "policy/loss",
        "value/loss",
        "response_length",
        "rollout/policy_version",
    )
    assert [[r.get(k) for k in keys] for r in _rows(crashed)] == [
        [r.get(k) for k in keys] for r in _rows(straight)
    ]


def test_grpo_estimator_trains(setup, tmp_path):
    """The critic-free estimator end to end: groups of 2 samples per prompt, KL as a loss term
    (k3 by default under GRPO), no value model."""
    out = tmp_path / "grpo"
    assert (
        _rlvr(setup, out, "rlvr.estimator=grpo", "rollout.samples_per_prompt=2", "rlvr.prompts_per_step=4")
        == 0
    ), (tmp_path / "grpo.log").read_text()[-3000:]
    steps = [r for r in _rows(out) if r["step"] > 0]
    assert len(steps) == 4  # 32 episodes / (4 prompts x 2 samples)
    for row in steps:
        assert "policy/loss" in row and "kl" in row and "time/update" in row
        assert not any(key.startswith("value/") for key in row)  # no critic under GRPO


RL_OPTION_RUNS = {
    # Tülu 3's own PPO script's score placement, with the corrections open-instruct / verl add
    "ppo": [
        "rlvr.score_placement=after_last",
        "rlvr.tis_cap=2.0",
        "rlvr.clip_eps_high=0.28",
        "rlvr.kl_placement=loss",
        "rlvr.loss_aggregation=constant",
        "rollout.check_logprobs=true",
    ],
    # DAPO / Dr. GRPO choices on the critic-free estimator
    "grpo": [
        "rlvr.estimator=grpo",
        "rollout.samples_per_prompt=2",
        "rlvr.prompts_per_step=4",
        "rlvr.drop_constant_groups=true",
        "rlvr.grpo_std=population",
        "rlvr.loss_aggregation=sequence",
        "rlvr.clip_eps_high=0.28",
        "rlvr.mask_truncated=true",  # at 16 new tokens the tiny model's completions are all cut: updates skipped
    ],
}


@pytest.mark.parametrize(
    "variant",
    [
        "ppo",
        pytest.param(
            "grpo",
            marks=full_set_only("RL_OPTIONS"),
        ),
    ],
)
def test_rl_options_train(setup, tmp_path, variant):
    """The RL options (README "RL options") switched on together train for 2 steps, and report
    what they did."""
    out = tmp_path / variant
    assert _rlvr(setup, out, "rlvr.total_episodes=16", *RL_OPTION_RUNS[variant]) == 0, (
        tmp_path / f"{variant}.log"
    ).read_text()[-3000:]
    steps = [r for r in _rows(out) if r["step"] > 0]
    assert len(steps) == 2
    for row in steps:
        assert all(v == v for v in row.values() if isinstance(v, float)), row  # no NaN
        assert "kl" in row and "policy/skipped_updates" in row
        # a mini-batch left without a token by the masks is skipped, not trained on NaN
        assert "policy/loss" in row or row["policy/skipped_updates"] == 1.0
        if variant == "ppo":
            assert "value/loss" in row and row["policy/skipped_updates"] == 0.0
            # on-policy, the engine's (processed, temperature-0.7) log-probs are the learner's:
            # the importance weights are 1 and the gap is float noise
            assert row["rollout/engine_logprob_gap_max"] < 1e-4, row
            assert abs(row["policy/tis_weight_mean"] - 1.0) < 1e-4 and row["policy/tis_capped_share"] == 0.0
        else:
            assert 0.0 <= row["rollout/constant_group_share"] <= 1.0
            if row["rollout/truncated_share"] == 1.0:  # nothing left to train the policy on
                assert row["policy/skipped_updates"] == 1.0 and "policy/loss" not in row
            assert not any(key.startswith("value/") for key in row)
