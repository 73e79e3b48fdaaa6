"""RL settings that cannot apply are refused before anything starts; the ones that apply are read."""

from __future__ import annotations

import pytest

from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.config.validate_rl import RLConfigError
from megatron_tulu.config.validate_rl import check_rl_config as check_with_rules
from megatron_tulu.errors import ConfigError, error_text
from megatron_tulu.evaluation.rl import scoring_options
from megatron_tulu.rewards.gsm8k import RULES


def check_rl_config(cfg: RLVRRunConfig) -> RLVRRunConfig:
    check_with_rules(cfg, RULES)
    return cfg


def _cfg(**changes) -> RLVRRunConfig:
    cfg = RLVRRunConfig()
    cfg.rlvr.prompts_per_step, cfg.rollout.samples_per_prompt = 32, 1
    cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens = 112, 48
    cfg.train.global_batch_size, cfg.train.seq_length, cfg.data.max_seq_len = 0, 0, 0
    for key, value in changes.items():
        section, field = key.split("__")
        setattr(getattr(cfg, section), field, value)
    return cfg


def test_consistent_or_zero_batch_and_lengths_pass():
    check_rl_config(_cfg())
    check_rl_config(_cfg(train__global_batch_size=32, train__seq_length=160, data__max_seq_len=160))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"train__global_batch_size": 16}, "set train.global_batch_size=32"),
        ({"train__seq_length": 512}, "set train.seq_length=160"),
        ({"data__max_seq_len": 100}, "set data.max_seq_len=160"),
        ({"rlvr__estimator": "grpo"}, "samples_per_prompt >= 2"),
        ({"rlvr__kl_kind": "k9"}, "rlvr.kl_kind must be"),
        ({"rlvr__gsm8k_rule": "exact"}, "rlvr.gsm8k_rule must be one of"),
        ({"rlvr__reward_workers": 0}, "rlvr.reward_workers must be >= 1"),
        # the RL options: known values, and only where they apply
        (
            {"rlvr__loss_aggregation": "median"},
            "rlvr.loss_aggregation must be one of token, sequence, constant",
        ),
        ({"rlvr__kl_placement": "advantage"}, "rlvr.kl_placement must be one of reward, loss, null"),
        ({"rlvr__score_placement": "first"}, "rlvr.score_placement must be one of"),
        ({"rlvr__grpo_std": "sample"}, "rlvr.grpo_std must be one of"),
        (
            {"rlvr__estimator": "grpo", "rollout__samples_per_prompt": 2, "rlvr__kl_placement": "reward"},
            "rlvr.kl_placement=reward cannot apply under rlvr.estimator=grpo",
        ),
        (
            {
                "rlvr__estimator": "grpo",
                "rollout__samples_per_prompt": 2,
                "rlvr__score_placement": "after_last",
            },
            "it needs rlvr.estimator=gae",
        ),
        ({"rlvr__grpo_std": "population"}, "applies to rlvr.estimator=grpo only"),
        ({"rlvr__tis_cap": 0.0}, "rlvr.tis_cap must be > 0"),
        ({"rlvr__clip_eps_high": 0.1}, "rlvr.clip_eps_high must be >= rlvr.clip_eps (0.2) or null, got 0.1"),
        ({"rlvr__clip_eps": 1.0}, "rlvr.clip_eps must be in [0, 1), got 1.0"),
        ({"rlvr__clip_eps": -0.1}, "rlvr.clip_eps must be in [0, 1)"),
        ({"rlvr__beta": -0.01}, "rlvr.beta must be >= 0, got -0.01"),
        ({"rlvr__value_clip": -0.2}, "rlvr.value_clip must be >= 0"),
        ({"rlvr__estimator": "reinforce"}, "rlvr.estimator must be one of gae, grpo; got 'reinforce'"),
        # an option only another estimator reads would be ignored
        (
            {"rlvr__lam": 0.9, "rlvr__estimator": "grpo", "rollout__samples_per_prompt": 2},
            "rlvr.lam=0.9 applies to rlvr.estimator=gae only",
        ),
        ({"rlvr__drop_constant_groups": True}, "needs rollout.samples_per_prompt >= 2"),
        ({"rlvr__loss_constant": 64}, "applies to rlvr.loss_aggregation=constant only"),
    ],
)
def test_settings_that_cannot_apply_are_refused(changes, message):
    pattern = message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    with pytest.raises(RLConfigError, match=pattern) as caught:
        check_rl_config(_cfg(**changes))
    # one `error:` line naming the field, as every config error; still a ValueError for callers
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)
    assert error_text(caught.value) == f"error: {caught.value}" and "\n" not in str(caught.value)


GROUPS = {"rollout__samples_per_prompt": 2}


@pytest.mark.parametrize(
    "changes, placement, kind",
    [
        ({}, "reward", "k1"),  # PPO's reward penalty (Tülu 3)
        ({"rlvr__estimator": "grpo", **GROUPS}, "loss", "k3"),  # GRPO's KL loss (DeepSeekMath)
        ({"rlvr__estimator": "grpo", "rlvr__kl_kind": "k2", **GROUPS}, "loss", "k2"),
        ({"rlvr__kl_placement": "loss"}, "loss", "k3"),  # PPO with a KL loss
        ({"rlvr__kl_placement": "reward", "rlvr__kl_kind": "k3"}, "reward", "k3"),
    ],
)
def test_kl_placement_and_kind_are_decided_once_at_validation(changes, placement, kind):
    rl = check_rl_config(_cfg(**changes)).rlvr
    assert (rl.kl_placement, rl.kl_kind) == (placement, kind)
    check_rl_config(_cfg(**changes))  # validating again keeps them (a resolved config is valid)
    assert (rl.kl_placement, rl.kl_kind) == (placement, kind)


def test_loss_constant_defaults_to_the_generation_budget():
    assert check_rl_config(_cfg()).rlvr.loss_constant is None  # token aggregation: no constant
    assert check_rl_config(_cfg(rlvr__loss_aggregation="constant")).rlvr.loss_constant == 48
    cfg = _cfg(rlvr__loss_aggregation="constant", rlvr__loss_constant=100)
    assert check_rl_config(cfg).rlvr.loss_constant == 100


def test_the_shipped_config_leaves_the_kl_kind_to_the_estimator():
    from megatron_tulu.config.load import load_config

    cfg = load_config(
        ["rlvr.estimator=grpo", "rollout.samples_per_prompt=2"], config_name="rlvr", schema=RLVRRunConfig
    )
    assert cfg.rlvr.kl_kind is None and cfg.rlvr.kl_placement is None
    check_rl_config(cfg)
    assert (cfg.rlvr.kl_placement, cfg.rlvr.kl_kind) == ("loss", "k3")


def test_tis_asks_the_engines_for_the_sampled_distributions_log_probs():
    from megatron_tulu.algorithms.rl_job import RLJob

    off = RLJob.engine_options(None, _cfg(), "m", "float32")
    on = RLJob.engine_options(None, _cfg(rlvr__tis_cap=2.0), "m", "float32")
    assert (off.logprobs_mode, on.logprobs_mode) == ("raw_logprobs", "processed_logprobs")


def test_scoring_options_reach_the_verifiers():
    opts = scoring_options(
        _cfg(rlvr__reward_workers=3, rlvr__strip_thinking=True, rlvr__gsm8k_rule="tulu3").rlvr
    )
    assert opts == {
        "alpha": 10.0,
        "no_eos_penalty": -10.0,
        "workers": 3,
        "strip_thinking": True,
        "verifier_options": {"gsm8k": {"rule": "tulu3"}},
    }
