"""PPO / GRPO tensor functions against hand-computed values."""

import math

import pytest
import torch

from megatron_tulu.losses.estimators import ESTIMATORS, get_estimator
from megatron_tulu.losses.ppo import (
    MaskedLoss,
    broadcast_to_tokens,
    explained_variance,
    gae,
    grpo_advantages,
    kl_penalty,
    last_valid_index,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from megatron_tulu.losses.registry import UnknownNameError
from megatron_tulu.rewards import score_sample


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype))


# ---------------------------------------------------------------- KL and rewards


def test_kl_estimators_on_known_values():
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.5)  # d = logp - ref = 0.5, -0.5
    close(kl_penalty(logp, ref, "k1"), [0.5, -0.5])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.125])
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) - (-0.5) - 1, math.exp(0.5) - 0.5 - 1])
    assert (kl_penalty(logp, ref, "k3") > 0).all()
    close(kl_penalty(logp, logp, "k3"), [0.0, 0.0])
    close(kl_penalty(logp, ref, "kl1"), [0.5, -0.5])  # open-instruct's name
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(logp, ref, "k4")


def test_last_valid_index_handles_offsets_and_empty_rows():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert last_valid_index(mask).tolist() == [2, 3, -1, 0]


def test_token_rewards_kl_plus_score_at_last_valid_token():
    beta = 0.05
    logp = t([-1.0, -2.0, -0.5, -9.0], [-7.0, -1.0, -1.0, -2.0], [-1.0, -1.0, -1.0, -1.0])
    ref = t([-1.5, -1.0, -0.5, 0.0], [0.0, -2.0, -0.5, -2.5], [-2.0, -2.0, -2.0, -2.0])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    score = t(10.0, -10.0, 10.0)
    rewards = token_rewards(score, logp, ref, mask, beta, "k1")
    expected = [
        [-beta * 0.5, -beta * -1.0, -beta * 0.0 + 10.0, 0.0],
        [0.0, -beta * 1.0, -beta * -0.5, -beta * 0.5 - 10.0],
        [0.0, 0.0, 0.0, 0.0],  # no valid token: neither KL nor score
    ]
    close(rewards, expected)
    assert not rewards.requires_grad


def test_no_eos_penalty_from_rewards_replaces_the_score():
    """The −10 no-EOS replacement lives in megatron_tulu.rewards; its reward is what lands on the
    last token."""
    finished = score_sample("It is 4.", "4", "gsm8k", finish_reason="stop", time_limit=None).reward
    truncated = score_sample("It is 4.", "4", "gsm8k", finish_reason="length", time_limit=None).reward
    assert (finished, truncated) == (10.0, -10.0)
    logp = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = token_rewards(t(finished, truncated), logp, logp, mask, beta=0.05)
    close(rewards, [[0.0, 10.0, 0.0], [0.0, 0.0, -10.0]])


# ---------------------------------------------------------------- GAE


def hand_gae(r, v, gamma, lam):
    """Three valid steps written out: δ_t = r_t + γ V_{t+1} − V_t, V_3 = 0."""
    d2 = r[2] + gamma * 0.0 - v[2]
    d1 = r[1] + gamma * v[2] - v[1]
    d0 = r[0] + gamma * v[1] - v[0]
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    return [a0, a1, a2]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_three_steps_with_padding(gamma, lam):
    r, v = [0.1, -0.2, 10.0], [0.5, 1.0, 2.0]
    # row 0: three tokens then a pad whose reward/value (7, 100) must be ignored;
    # row 1: the same trajectory shifted right by one (a masked position in front).
    rewards = t([*r, 7.0], [3.0, *r])
    values = t([*v, 100.0], [-50.0, *v])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    a = hand_gae(r, v, gamma, lam)
    close(adv, [[*a, 0.0], [0.0, *a]])
    returns = [ai + vi for ai, vi in zip(a, v)]
    close(ret, [[*returns, 0.0], [0.0, *returns]])


def test_gae_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards, values = t([1.0, 2.0, 3.0, 4.0]), t([0.5, 0.5, 0.5, 0.5])
    adv, ret = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    close(ret, [[10.0, 9.0, 7.0, 4.0]])
    close(adv, [[9.5, 8.5, 6.5, 3.5]])


def test_gae_carries_no_gradient():
    values = t([0.5, 1.0]).requires_grad_()
    adv, ret = gae(t([1.0, 1.0]), values, torch.ones(1, 2))
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- masked statistics


def test_masked_mean_var_and_whiten_ignore_masked_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    x = t([1.0, 2.0, 1000.0], [3.0, -500.0, 7.0])
    close(masked_mean(x, mask), 2.0)
    close(masked_mean(x, mask, dim=1), [1.5, 3.0])
    close(masked_var(x, mask), 1.0)  # unbiased: ((1)+(0)+(1)) / (3 - 1)
    close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)
    white = masked_whiten(x, mask)
    close(white, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    x2 = x.clone()
    x2[mask == 0] = 1e6  # changing masked entries changes nothing
    torch.testing.assert_close(masked_whiten(x2, mask), white)


def test_masked_statistics_on_tiny_masks():
    x = t([5.0, 9.0])
    close(masked_var(x, torch.tensor([[1, 0]])), 0.0)
    close(masked_whiten(x, torch.tensor([[1, 0]])), [[0.0, 0.0]])
    close(masked_mean(x, torch.tensor([[0, 0]])), 0.0)
    assert torch.isfinite(masked_whiten(x, torch.tensor([[0, 0]]))).all()


# ---------------------------------------------------------------- policy loss


def test_policy_loss_at_and_past_the_clip_boundary():
    ratios = [1.2, 1.3, 1.2, 1.3, 0.7, 0.7, 5.0]
    advantages = [1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 3.0]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])  # the last token (ratio 5) is padding
    old = t([-1.0] * 7)
    logp = (old + torch.log(t(ratios))).requires_grad_()
    # ε = 0.2 up to rounding: taken from the ratio torch actually computes, so that ratio 1.2 sits
    # exactly on the boundary whatever exp's last-bit behaviour on this CPU.
    clip_eps = torch.exp(logp[0, 0] - old[0, 0]).item() - 1.0
    assert abs(clip_eps - 0.2) < 1e-12
    loss, metrics = policy_loss(logp, old, t(advantages), mask, clip_eps=clip_eps)
    # per token max(−Aρ, −A·clip(ρ, 0.8, 1.2)):
    #   ρ=1.2, A=+1: −1.2 (boundary)      ρ=1.3, A=+1: −1.2 (clipped)
    #   ρ=1.2, A=−1: +1.2 (boundary)      ρ=1.3, A=−1: +1.3 (unclipped, pessimistic)
    #   ρ=0.7, A=+1: −0.7 (unclipped)     ρ=0.7, A=−1: +0.8 (clipped)
    per_token = [-1.2, -1.2, 1.2, 1.3, -0.7, 0.8]
    close(loss.loss_sum, sum(per_token))
    assert loss.num_tokens.item() == 6
    close(loss.mean, sum(per_token) / 6)
    loss.mean.backward()
    # d/dlogp of −Aρ is −Aρ where unclipped, 0 where the clipped branch wins
    grads = [-1.2, 0.0, 1.2, 1.3, -0.7, 0.0, 0.0]
    close(logp.grad, [[g / 6 for g in grads]])
    close(metrics["clip_fraction"], 2 / 6)
    close(metrics["approx_kl"], sum(0.5 * math.log(r) ** 2 for r in ratios[:6]) / 6)
    close(metrics["ratio_mean"], sum(ratios[:6]) / 6)


def test_policy_loss_first_epoch_is_minus_mean_advantage():
    logp = t([-1.0, -2.0, -3.0])
    adv = t([0.5, -1.5, 2.0])
    loss, metrics = policy_loss(logp, logp.clone(), adv, torch.tensor([[1, 1, 0]]))
    close(loss.mean, -(0.5 - 1.5) / 2)
    close(metrics["clip_fraction"], 0.0)
    close(metrics["approx_kl"], 0.0)


# ---------------------------------------------------------------- value loss


def test_value_loss_clipping():
    values = t([1.5, 1.5, 1.1, 9.0]).requires_grad_()
    old = t([1.0, 1.0, 1.0, 0.0])
    returns = t([2.0, 1.0, 2.0, 0.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, metrics = value_loss(values, old, returns, mask, clip=0.2)
    # token 0: V_clip = 1.2: max(0.5², 0.8²) = 0.64 (clipped) -> 0.32
    # token 1: V_clip = 1.2: max(0.5², 0.2²) = 0.25 (unclipped) -> 0.125
    # token 2: |V − V_old| = 0.1 < 0.2: both 0.9² -> 0.405
    close(loss.loss_sum, 0.32 + 0.125 + 0.405)
    close(loss.mean, (0.32 + 0.125 + 0.405) / 3)
    close(metrics["value_clip_fraction"], 1 / 3)
    loss.loss_sum.backward()
    close(values.grad, [[0.0, 0.5, 1.1 - 2.0, 0.0]])  # d/dV ½(V−R)² = V − R where unclipped
    close(loss.scale(0.1).loss_sum, 0.1 * (0.32 + 0.125 + 0.405))


def test_explained_variance():
    returns = t([1.0, 2.0, 3.0, 50.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(explained_variance(returns.clone(), returns, mask), 1.0)
    close(explained_variance(t([2.0, 2.0, 2.0, 0.0]), returns, mask), 0.0)
    close(explained_variance(t([0.0, 0.0, 0.0, 0.0]), returns, mask), 1.0 - (14 / 3 - 4) / (2 / 3))
    assert torch.isnan(explained_variance(returns, t([4.0, 4.0, 4.0, 0.0]), mask))


# ---------------------------------------------------------------- aggregation


def test_sum_count_aggregation_is_invariant_to_splitting_the_batch():
    gen = torch.Generator().manual_seed(0)
    b, T = 4, 6
    logp, old = torch.randn(b, T, generator=gen), torch.randn(b, T, generator=gen)
    adv, values = torch.randn(b, T, generator=gen), torch.randn(b, T, generator=gen)
    returns = torch.randn(b, T, generator=gen)
    lengths = torch.tensor([6, 1, 3, 5])
    mask = torch.arange(T).expand(b, T) < lengths[:, None]

    def pieces(rows):
        p, _ = policy_loss(logp[rows], old[rows], adv[rows], mask[rows])
        v, _ = value_loss(values[rows], old[rows], returns[rows], mask[rows])
        return p, v

    full_p, full_v = pieces(slice(None))
    halves = [pieces(slice(0, 2)), pieces(slice(2, 4))]
    for full, parts in ((full_p, [h[0] for h in halves]), (full_v, [h[1] for h in halves])):
        combined = MaskedLoss.combine(parts)
        torch.testing.assert_close(combined.mean, full.mean)
        assert combined.num_tokens.item() == 15
        numerator, denominator = combined.as_tuple()
        torch.testing.assert_close(numerator / denominator, full.mean)
        # averaging the per-half means would weight the 7 tokens of half one like the 8 of half two
        naive = (parts[0].mean + parts[1].mean) / 2
        assert not torch.allclose(naive, full.mean)


# ---------------------------------------------------------------- GRPO and estimators


def test_grpo_group_normalization():
    scores = t(1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0)
    adv = grpo_advantages(scores, group_size=4, eps=1e-6)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    a = 0.5 / (std + 1e-6)
    close(adv, [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])  # identical scores: exactly 0, no NaN
    close(grpo_advantages(scores, group_size=4, std="none"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    close(grpo_advantages(t(3.0, -1.0), group_size=1), [0.0, 0.0])
    with pytest.raises(ValueError, match="groups of 3"):
        grpo_advantages(scores, group_size=3)


def test_grpo_estimator_broadcasts_to_valid_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    estimate = get_estimator("grpo").fn
    adv, returns = estimate(scores=t(1.0, 3.0), mask=mask, group_size=2)
    a = 1.0 / (math.sqrt(2.0) + 1e-6)
    close(adv, [[-a, -a, 0.0], [a, 0.0, 0.0]])
    assert returns is None
    close(broadcast_to_tokens(t(2.0, -1.0), mask), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


def test_gae_estimator_returns_from_raw_advantages_then_whitens():
    rewards = t([0.1, -0.2, 10.0, 0.0], [0.0, 0.3, -10.0, 0.0])
    values = t([0.5, 1.0, 2.0, 9.0], [0.2, 0.1, 0.4, 9.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    adv, returns = ESTIMATORS["gae"].fn(rewards=rewards, values=values, mask=mask)
    raw, raw_returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(returns, raw_returns)
    torch.testing.assert_close(adv, masked_whiten(raw, mask))
    close(masked_mean(adv, mask), 0.0)
    close(masked_var(adv, mask), 1.0)
    unwhitened, _ = get_estimator("gae").fn(rewards=rewards, values=values, mask=mask, whiten=False)
    torch.testing.assert_close(unwhitened, raw)
    with pytest.raises(ValueError, match="value model"):
        get_estimator("gae").fn(rewards=rewards, values=None, mask=mask)


def test_unknown_estimator_lists_registered():
    with pytest.raises(UnknownNameError, match="registered: gae, grpo"):
        get_estimator("reinforce")
