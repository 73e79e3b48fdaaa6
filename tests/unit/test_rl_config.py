"""RL settings that cannot apply are refused before anything starts; the ones that apply are read."""

from __future__ import annotations

import pytest

from megatron_tulu.algorithms.rlvr import check_rl_config, kl_kind_of, scoring_options
from megatron_tulu.config.schema import RLVRRunConfig


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
    ],
)
def test_settings_that_cannot_apply_are_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_rl_config(_cfg(**changes))


def test_kl_kind_defaults_by_estimator_and_is_honoured_when_set():
    assert kl_kind_of(_cfg().rlvr) == "k1"  # PPO reward penalty (Tülu 3)
    assert kl_kind_of(_cfg(rlvr__estimator="grpo").rlvr) == "k3"  # GRPO's KL loss
    assert kl_kind_of(_cfg(rlvr__estimator="grpo", rlvr__kl_kind="k2").rlvr) == "k2"


def test_scoring_options_reach_the_verifiers():
    opts = scoring_options(
        _cfg(rlvr__reward_workers=3, rlvr__strip_thinking=True, rlvr__gsm8k_rule="tulu3").rlvr
    )
    assert opts == {
        "alpha": 10.0,
        "no_eos_penalty": -10.0,
        "workers": 3,
        "strip_thinking": True,
        "gsm8k_rule": "tulu3",
    }
