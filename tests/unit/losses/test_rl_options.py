"""RL options (pure loss-side functions; the trainer wiring is tested in test_rl_wiring.py) against
hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.losses.ppo import aggregate_loss, clipped_policy_loss, gae, grpo_advantages
from megatron_tulu.losses.rl_options import (
    k3_kl_loss,
    mask_truncated,
    nonconstant_group_mask,
    place_scores,
    token_rewards_placed,
    truncated_importance_weights,
)

D = torch.float64


def t(values):
    return torch.tensor(values, dtype=D)


def test_truncated_importance_weights_cap_and_mask():
    learner = t([[math.log(0.5), math.log(0.9), math.log(0.2)]])
    rollout = t([[math.log(0.25), math.log(0.9), math.log(0.8)]])
    weights = truncated_importance_weights(learner, rollout, t([[1, 1, 0]]), cap=1.5)
    # ratios 2.0 (capped at 1.5), 1.0, 0.25 (masked out)
    torch.testing.assert_close(weights, t([[1.5, 1.0, 0.0]]))
    with pytest.raises(ValueError):
        truncated_importance_weights(learner, rollout, t([[1, 1, 1]]), cap=0)


def test_clip_higher_bounds_are_asymmetric():
    old = t([[0.0, 0.0, 0.0, 0.0]])
    logp = torch.log(t([[1.5, 1.5, 0.5, 0.5]]))  # ratios
    adv = t([[1.0, -1.0, 1.0, -1.0]])
    loss = clipped_policy_loss(logp, old, adv, t([[1, 1, 1, 1]]), eps_low=0.2, eps_high=0.28)
    # ρ=1.5, A=+1: max(-1.5, -1.28) = -1.28 (clipped at 1 + ε_high)
    # ρ=1.5, A=-1: max(1.5, 1.28) = 1.5
    # ρ=0.5, A=+1: max(-0.5, -0.8) = -0.5
    # ρ=0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped at 1 - ε_low)
    torch.testing.assert_close(loss, t([[-1.28, 1.5, -0.5, 0.8]]))


def test_clipped_loss_with_tis_weights_and_gradient():
    logp = torch.zeros(1, 2, dtype=D, requires_grad=True)
    loss = clipped_policy_loss(logp, t([[0.0, 0.0]]), t([[2.0, 2.0]]), t([[1, 0]]), weights=t([[0.5, 3.0]]))
    torch.testing.assert_close(loss.detach(), t([[-1.0, 0.0]]))  # -A·ρ·w = -2·1·0.5; masked
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, t([[-1.0, 0.0]]))  # d(-A·w·e^x)/dx at 0


def test_k3_kl_loss_values_clamp_and_gradient():
    logp = t([[math.log(0.5), math.log(0.5), -30.0]]).requires_grad_(True)
    ref = t([[math.log(0.25), math.log(0.5), 0.0]])
    loss = k3_kl_loss(logp, ref, t([[1, 1, 1]]), clamp=10.0)
    # d = ln 0.5: e^d - d - 1 = 0.5 + ln 2 - 1; d = 0: 0; d = 30 -> clamped to 20 -> huge -> 10
    torch.testing.assert_close(loss.detach(), t([[0.5 + math.log(2) - 1, 0.0, 10.0]]))
    loss[0, 0].backward()
    # d/dlogp (e^d - d - 1) with d = ref - logp: -(e^d - 1) = 0.5
    torch.testing.assert_close(logp.grad[0, 0], torch.tensor(0.5, dtype=D))


def test_nonconstant_group_mask():
    scores = t([1, 1, 1, 0, 1, 0, 5, 5, 5])
    assert nonconstant_group_mask(scores, 3).tolist() == [False] * 3 + [True] * 3 + [False] * 3
    with pytest.raises(ValueError):
        nonconstant_group_mask(scores, 4)


def test_mask_truncated():
    mask = t([[1, 1, 0], [1, 1, 1]])
    out = mask_truncated(mask, torch.tensor([True, False]))
    torch.testing.assert_close(out, t([[1, 1, 0], [0, 0, 0]]))


def test_loss_aggregations():
    per_token = t([[1.0, 3.0, 9.0], [4.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    num, den = aggregate_loss(per_token, mask, "token")
    assert (num.item(), den.item()) == (8.0, 3.0)
    num, den = aggregate_loss(per_token, mask, "sequence")
    assert (num.item(), den.item()) == (2.0 + 4.0, 2.0)  # row means 2 and 4; the empty row is left out
    num, den = aggregate_loss(per_token, mask, "constant", constant=10)
    assert (num.item(), den.item()) == (8.0, 30.0)
    with pytest.raises(ValueError):
        aggregate_loss(per_token, mask, "constant")
    with pytest.raises(ValueError):
        aggregate_loss(per_token, mask, "median")


def test_score_placement_textbook_and_after_last():
    mask = t([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    score = t([5.0, 7.0, 9.0])
    rewards, gae_mask = place_scores(score, mask, "last_token")
    torch.testing.assert_close(rewards, t([[0, 5, 0, 0], [0, 0, 0, 7], [0, 0, 0, 0]]))
    torch.testing.assert_close(gae_mask, mask)
    rewards, gae_mask = place_scores(score, mask, "after_last")
    # Row 0: one position after its last token; row 1 fills T, so its last token; row 2 empty.
    torch.testing.assert_close(rewards, t([[0, 0, 5, 0], [0, 0, 0, 7], [0, 0, 0, 0]]))
    torch.testing.assert_close(gae_mask, t([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))


def test_after_last_placement_bootstraps_the_extra_value_in_gae():
    # One row, two response tokens, T = 3; no KL (logp == ref); score 1; γ = λ = 1.
    mask = t([[1, 1, 0]])
    zeros = torch.zeros(1, 3, dtype=D)
    rewards, gae_mask = token_rewards_placed(t([1.0]), zeros, zeros, mask, beta=0.1, placement="after_last")
    values = t([[0.2, 0.5, 0.9]])
    advantages, returns = gae(rewards, values, gae_mask, gamma=1.0, lam=1.0)
    # Episode runs to position 2, where the score is: A_t = 1 - V_t for every t in the span.
    torch.testing.assert_close(advantages, t([[0.8, 0.5, 0.1]]))
    torch.testing.assert_close(returns, t([[1.0, 1.0, 1.0]]))
    # Textbook placement: the span ends at position 1 and V_2 is never used.
    rewards, gae_mask = token_rewards_placed(t([1.0]), zeros, zeros, mask, beta=0.1)
    advantages, _ = gae(rewards, values, gae_mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, t([[0.8, 0.5, 0.0]]))


def test_token_rewards_placed_includes_kl():
    logp, ref = t([[-1.0, -2.0]]), t([[-1.5, -2.0]])
    rewards, _ = token_rewards_placed(t([3.0]), logp, ref, t([[1, 1]]), beta=0.2)
    torch.testing.assert_close(rewards, t([[-0.2 * 0.5, 3.0]]))


def test_group_std_with_and_without_bessel():
    scores = t([0.0, 0.0, 1.0, 1.0])
    # mean 0.5; deviations ±0.5; population std 0.5; unbiased std sqrt(1/3)
    unbiased = grpo_advantages(scores, 4, eps=0.0, std="unbiased")
    population = grpo_advantages(scores, 4, eps=0.0, std="population")
    centred = grpo_advantages(scores, 4, std="none")
    torch.testing.assert_close(population, t([-1.0, -1.0, 1.0, 1.0]))
    torch.testing.assert_close(unbiased, t([-0.5, -0.5, 0.5, 0.5]) / math.sqrt(1 / 3))
    torch.testing.assert_close(centred, t([-0.5, -0.5, 0.5, 0.5]))
    torch.testing.assert_close(grpo_advantages(t([3.0]), 1), t([0.0]))
    with pytest.raises(ValueError):
        grpo_advantages(scores, 4, std="sample")
