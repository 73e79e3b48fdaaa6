"""RL settings that cannot apply are refused before anything starts; the ones that apply are read."""

from __future__ import annotations

import pytest

from megatron_tulu.algorithms.rlvr import check_rl_config, kl_kind_of, kl_placement_of, scoring_options
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
        ({"rlvr__clip_eps_high": -0.1}, "rlvr.clip_eps_high must be >= 0"),
        ({"rlvr__drop_constant_groups": True}, "needs rollout.samples_per_prompt >= 2"),
        ({"rlvr__loss_constant": 64}, "applies to rlvr.loss_aggregation=constant only"),
    ],
)
def test_settings_that_cannot_apply_are_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_rl_config(_cfg(**changes))


def test_kl_kind_defaults_by_estimator_and_is_honoured_when_set():
    assert kl_kind_of(_cfg().rlvr) == "k1"  # PPO reward penalty (Tülu 3)
    assert kl_kind_of(_cfg(rlvr__estimator="grpo").rlvr) == "k3"  # GRPO's KL loss
    assert kl_kind_of(_cfg(rlvr__estimator="grpo", rlvr__kl_kind="k2").rlvr) == "k2"
    assert kl_kind_of(_cfg(rlvr__kl_placement="loss").rlvr) == "k3"  # PPO with a KL loss
    assert (
        kl_placement_of(_cfg().rlvr) == "reward"
        and kl_placement_of(_cfg(rlvr__estimator="grpo").rlvr) == "loss"
    )


def test_the_shipped_config_leaves_the_kl_kind_to_the_estimator():
    from megatron_tulu.config.load import load_config

    cfg = load_config(
        ["rlvr.estimator=grpo", "rollout.samples_per_prompt=2"], config_name="rlvr", schema=RLVRRunConfig
    )
    assert kl_kind_of(cfg.rlvr) == "k3"
    check_rl_config(cfg)


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
        "gsm8k_rule": "tulu3",
    }


def test_every_rl_field_is_read_somewhere():
    """Each field of the RL entry's own sections is read by the package (a field nothing reads
    would be accepted and silently ignored)."""
    import dataclasses
    import re
    from pathlib import Path

    from megatron_tulu.config.schema import RLVROptions, RolloutConfig

    package = Path(__file__).resolve().parents[2] / "megatron_tulu"
    source = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "schema.py")
    unread = [
        f"{section}.{f.name}"
        for section, cls in (("rlvr", RLVROptions), ("rollout", RolloutConfig))
        for f in dataclasses.fields(cls)
        if not re.search(rf"\.{f.name}\b", source)
    ]
    assert not unread, f"config fields nothing reads: {unread}"
