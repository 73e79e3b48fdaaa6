"""The RL options as the trainer wires them (``rlvr.advantages``: rewards, advantages, the policy
loss's mask and weights), on a hand-made batch: defaults reproduce the plain Tülu 3 computation,
each option changes exactly what it names."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.algorithms.rlvr import advantages
from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.config.validate_rl import check_rl_config
from megatron_tulu.losses import estimators
from megatron_tulu.losses.estimators import Estimator, gae_estimator, register_estimator
from megatron_tulu.losses.ppo import grpo_advantages, token_rewards
from megatron_tulu.rewards.gsm8k import RULES

T = 6


def _cfg(**changes) -> RLVRRunConfig:
    """A validated config: the KL placement and kind are resolved, as the trainer reads them."""
    cfg = RLVRRunConfig()
    cfg.rollout.samples_per_prompt = 2
    cfg.rollout.max_new_tokens = 48
    cfg.train.global_batch_size, cfg.train.seq_length, cfg.data.max_seq_len = 0, 0, 0
    for key, value in changes.items():
        section, field = key.split("__")
        setattr(getattr(cfg, section), field, value)
    check_rl_config(cfg, RULES)
    return cfg


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, T)
    for row, (start, length) in enumerate([(1, 3), (0, 4), (2, 2), (1, 5)]):
        mask[row, start : start + length] = 1
    old = -torch.rand(4, T, generator=g) * mask
    return {
        "mask": mask,
        "scores": torch.tensor([10.0, 0.0, 10.0, 10.0]),  # groups of 2: (10, 0) varied, (10, 10) constant
        "old_logp": old,
        "ref_logp": old - 0.1 * torch.rand(4, T, generator=g) * mask,
        "entropy": torch.rand(4, T, generator=g),
        "old_values": torch.randn(4, T, generator=g) * mask,
        "engine_logp": (old + torch.tensor([0.0, 1.0, -0.3, 0.2]).unsqueeze(1))
        * mask,  # ratio e^0, e^-1, ...
        "stopped": torch.tensor([True, False, True, True]),
    }


def test_defaults_are_the_plain_tulu3_computation():
    cfg, data = _cfg(), _batch()
    stats = advantages(cfg, data)
    rewards = token_rewards(data["scores"], data["old_logp"], data["ref_logp"], data["mask"], 0.05, "k1")
    adv, returns = gae_estimator(
        rewards=rewards, values=data["old_values"], mask=data["mask"], gamma=1.0, lam=0.95
    )
    torch.testing.assert_close(data["advantages"], adv * data["mask"], rtol=0, atol=0)
    torch.testing.assert_close(data["returns"], returns, rtol=0, atol=0)
    assert torch.equal(data["loss_mask"], data["mask"]) and "tis_weight" not in data
    assert set(stats) == {"kl", "entropy"}


def test_truncated_and_constant_groups_leave_the_loss_mask():
    data = _batch()
    stats = advantages(_cfg(rlvr__mask_truncated=True, rlvr__drop_constant_groups=True), data)
    kept_rows = data["loss_mask"].sum(dim=1) > 0
    assert kept_rows.tolist() == [True, False, False, False]  # row 1 was cut; rows 2-3 are the (10, 10) group
    assert stats["rollout/truncated_share"] == 0.25 and stats["rollout/constant_group_share"] == 0.5
    torch.testing.assert_close(data["loss_mask"][0], data["mask"][0])


def test_tis_weights_are_the_capped_ratio_against_the_engine():
    data = _batch()
    stats = advantages(_cfg(rlvr__tis_cap=1.2), data)
    expected = torch.exp(-torch.tensor([0.0, 1.0, -0.3, 0.2])).clamp(max=1.2).unsqueeze(1) * data["mask"]
    torch.testing.assert_close(data["tis_weight"], expected)
    # engine log-prob above the learner's by 0.3 on row 2: ratio e^0.3 = 1.35 > 1.2 is capped
    assert math.isclose(stats["policy/tis_capped_share"], 2 / 14, rel_tol=1e-6)


def test_score_after_the_last_token_is_bootstrapped_there_but_whitened_over_the_response():
    data = _batch()
    advantages(_cfg(rlvr__score_placement="after_last", rlvr__beta=0.0), data)
    mask = data["mask"]
    assert torch.all(data["advantages"][mask == 0] == 0)
    assert abs(float((data["advantages"] * mask).sum() / mask.sum())) < 1e-6  # whitened over the response
    # row 0 (positions 1..3): the score sits at position 4, whose value the return now includes
    assert (
        data["returns"][0, 4] == 10.0 and data["returns"][3, 5] != 0
    )  # row 3 fills the row: score stays at 5
    plain = _batch()
    advantages(_cfg(rlvr__beta=0.0), plain)
    assert not torch.allclose(plain["returns"], data["returns"])


def test_grpo_std_and_kl_placement():
    cfg = _cfg(rlvr__estimator="grpo", rlvr__grpo_std="population")
    data = _batch()
    advantages(cfg, data)
    expected = grpo_advantages(data["scores"], 2, std="population").unsqueeze(1) * data["mask"]
    torch.testing.assert_close(data["advantages"], expected)
    # GRPO's KL is a loss term: the rewards carry none, so the advantages ignore the reference
    shifted = _batch()
    shifted["ref_logp"] = shifted["ref_logp"] - 1.0
    advantages(cfg, shifted)
    torch.testing.assert_close(shifted["advantages"], data["advantages"])


def test_an_unvalidated_config_is_refused():
    cfg = RLVRRunConfig()  # rlvr.kl_placement / kl_kind left to the estimator: undecided
    with pytest.raises(RuntimeError, match="resolved by check_rl_config"):
        advantages(cfg, _batch())


def rloo(*, scores: torch.Tensor, mask: torch.Tensor, group_size: int) -> tuple[torch.Tensor, None]:
    """REINFORCE leave-one-out: each sample's score minus the mean of the other samples of its prompt."""
    grouped = scores.reshape(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1).unsqueeze(1) * mask, None


def test_a_new_estimator_is_one_registry_entry(monkeypatch):
    """docs/estimators.md: a registry entry and its pure function are all an estimator takes -- the
    config checks and the advantages phase ask the entry for its needs, never its name."""
    monkeypatch.setattr(estimators, "ESTIMATORS", dict(estimators.ESTIMATORS))  # a temporary copy
    register_estimator(
        "rloo",
        Estimator(
            rloo,
            inputs=("scores", "mask"),
            options={"group_size": "rollout.samples_per_prompt"},
            needs_groups=True,
        ),
    )
    cfg, data = _cfg(rlvr__estimator="rloo"), _batch()
    assert (cfg.rlvr.kl_placement, cfg.rlvr.kl_kind) == ("loss", "k3")  # resolved from the entry
    stats = advantages(cfg, data)
    # scores (10, 0 | 10, 10) in groups of 2: 10 - 0, 0 - 10, then a constant group
    expected = torch.tensor([10.0, -10.0, 0.0, 0.0]).unsqueeze(1) * data["mask"]
    torch.testing.assert_close(data["advantages"], expected, rtol=0, atol=0)
    assert "returns" not in data and set(stats) == {"kl", "entropy"}
    with pytest.raises(ValueError, match="rlvr.estimator=rloo needs rollout.samples_per_prompt >= 2"):
        _cfg(rlvr__estimator="rloo", rollout__samples_per_prompt=1)
    with pytest.raises(ValueError, match="rlvr.kl_placement=reward cannot apply under rlvr.estimator=rloo"):
        _cfg(rlvr__estimator="rloo", rlvr__kl_placement="reward")
