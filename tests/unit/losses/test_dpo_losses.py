"""DPO-family losses against hand-computed values."""

import math

import pytest
import torch

from megatron_tulu.losses.dpo import (
    DPO_LOSSES,
    PreferenceLogps,
    get_dpo_loss,
    needs_reference,
    register_dpo_loss,
    unregister_dpo_loss,
)
from megatron_tulu.losses.registry import UnknownNameError


def neg_log_sigmoid(z: float) -> float:
    """−log σ(z) written out: log(1 + e^−z)."""
    return math.log(1.0 + math.exp(-z))


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# Pair 0: chosen 2 tokens, rejected 4 tokens. Pair 1: chosen 10 tokens, rejected 1 token; its summed
# log-ratios prefer the chosen response (1 > 0.5) but the per-token ones prefer the rejected (0.1 < 0.5).
POLICY_C, POLICY_R = (-6.0, -20.0), (-12.0, -4.5)
REF_C, REF_R = (-8.0, -21.0), (-10.0, -5.0)
N_C, N_R = (2, 10), (4, 1)


def make_logps(**overrides) -> PreferenceLogps:
    kwargs = dict(
        policy_chosen=t(*POLICY_C),
        policy_rejected=t(*POLICY_R),
        ref_chosen=t(*REF_C),
        ref_rejected=t(*REF_R),
        chosen_tokens=torch.tensor(N_C),
        rejected_tokens=torch.tensor(N_R),
    )
    kwargs.update(overrides)
    return PreferenceLogps(**kwargs)


def test_dpo_sigmoid_on_sums():
    beta = 0.1
    loss, m = get_dpo_loss("dpo")(make_logps(), beta=beta)
    # pair 0: 0.1 * ((-6 + 8) - (-12 + 10)) = 0.4; pair 1: 0.1 * ((-20 + 21) - (-4.5 + 5)) = 0.05
    expected = [neg_log_sigmoid(0.4), neg_log_sigmoid(0.05)]
    torch.testing.assert_close(loss, t(*expected))
    torch.testing.assert_close(m["chosen_reward"], t(0.2, 0.1))
    torch.testing.assert_close(m["rejected_reward"], t(-0.2, 0.05))
    torch.testing.assert_close(m["reward_margin"], t(0.4, 0.05))
    torch.testing.assert_close(m["reward_accuracy"], t(1.0, 1.0))
    torch.testing.assert_close(m["policy_chosen_logps"], t(*POLICY_C))
    torch.testing.assert_close(m["policy_rejected_logps"], t(*POLICY_R))


def test_dpo_norm_divides_policy_and_reference_by_their_lengths():
    beta = 5.0
    loss, m = get_dpo_loss("dpo_norm")(make_logps(), beta=beta)
    # pair 0: chosen (-6/2 - -8/2) = 1, rejected (-12/4 - -10/4) = -0.5 -> logit 5 * 1.5 = 7.5
    # pair 1: chosen (-20/10 - -21/10) = 0.1, rejected (-4.5/1 - -5/1) = 0.5 -> logit 5 * -0.4 = -2
    torch.testing.assert_close(loss, t(neg_log_sigmoid(7.5), neg_log_sigmoid(-2.0)))
    torch.testing.assert_close(m["chosen_reward"], t(5.0, 0.5))
    torch.testing.assert_close(m["rejected_reward"], t(-2.5, 2.5))
    torch.testing.assert_close(m["reward_accuracy"], t(1.0, 0.0))  # dpo says 1.0 for pair 1
    torch.testing.assert_close(m["policy_chosen_logps"], t(-3.0, -2.0))
    torch.testing.assert_close(m["policy_rejected_logps"], t(-3.0, -4.5))


def test_label_smoothing_is_conservative_dpo():
    eps = 0.1
    loss, _ = get_dpo_loss("dpo")(make_logps(), beta=0.1, label_smoothing=eps)
    expected = [(1 - eps) * neg_log_sigmoid(z) + eps * neg_log_sigmoid(-z) for z in (0.4, 0.05)]
    torch.testing.assert_close(loss, t(*expected))
    norm, _ = get_dpo_loss("dpo_norm")(make_logps(), beta=5.0, label_smoothing=0.5)
    # at ε = 0.5 the loss is symmetric in z: ½(softplus(−z) + softplus(z))
    torch.testing.assert_close(
        norm, t(*[0.5 * (neg_log_sigmoid(z) + neg_log_sigmoid(-z)) for z in (7.5, -2.0)])
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        get_dpo_loss("dpo")(make_logps(), beta=0.1, label_smoothing=0.7)


def test_simpo_is_reference_free_and_length_normalized():
    beta, ratio = 2.0, 0.5
    logps = make_logps(ref_chosen=None, ref_rejected=None)
    loss, m = get_dpo_loss("simpo")(logps, beta=beta, gamma_beta_ratio=ratio)
    # pair 0: 2 * (-3 - -3) - 2 * 0.5 = -1; pair 1: 2 * (-2 - -4.5) - 1 = 4
    torch.testing.assert_close(loss, t(neg_log_sigmoid(-1.0), neg_log_sigmoid(4.0)))
    torch.testing.assert_close(m["chosen_reward"], t(-6.0, -4.0))
    torch.testing.assert_close(m["rejected_reward"], t(-6.0, -9.0))
    torch.testing.assert_close(m["reward_accuracy"], t(0.0, 1.0))  # a tie is not a win
    default, _ = get_dpo_loss("simpo")(logps, beta=beta)  # gamma_beta_ratio defaults to 0.5
    torch.testing.assert_close(default, loss)
    # reference log-probs, when present, change nothing
    torch.testing.assert_close(get_dpo_loss("simpo")(make_logps(), beta=beta)[0], loss)


def test_ipo_squared_loss_length_normalized_by_default():
    beta = 0.1  # target margin 1 / (2 * 0.1) = 5
    loss, m = get_dpo_loss("ipo")(make_logps(), beta=beta)
    # per-token log-ratio differences: pair 0: 1 - (-0.5) = 1.5; pair 1: 0.1 - 0.5 = -0.4
    torch.testing.assert_close(loss, t((1.5 - 5) ** 2, (-0.4 - 5) ** 2))
    torch.testing.assert_close(m["chosen_reward"], t(0.1, 0.01))
    sums, _ = get_dpo_loss("ipo")(make_logps(), beta=beta, length_normalize=False)
    torch.testing.assert_close(sums, t((4.0 - 5) ** 2, (0.5 - 5) ** 2))
    with pytest.raises(ValueError, match="label_smoothing"):
        get_dpo_loss("ipo")(make_logps(), beta=beta, label_smoothing=0.1)


def test_wpo_weights_dpo_by_detached_length_normalized_probabilities():
    beta = 0.1
    loss, m = get_dpo_loss("wpo")(make_logps(), beta=beta)
    # weights: exp(-6/2 + -12/4) = e^-6 and exp(-20/10 + -4.5/1) = e^-6.5
    weights = [math.exp(-6.0), math.exp(-6.5)]
    torch.testing.assert_close(m["policy_weight"], t(*weights))
    torch.testing.assert_close(loss, t(weights[0] * neg_log_sigmoid(0.4), weights[1] * neg_log_sigmoid(0.05)))
    # per-token means supplied by the trainer (e.g. WPO's "sampled alignment") override sum/count,
    # and the weight is clamped at 1
    custom = make_logps(policy_chosen_token_mean=t(0.5, -1.0), policy_rejected_token_mean=t(0.0, -2.0))
    _, mc = get_dpo_loss("wpo")(custom, beta=beta)
    torch.testing.assert_close(mc["policy_weight"], t(1.0, math.exp(-3.0)))


def test_wpo_weight_carries_no_gradient():
    beta = 0.1
    pc = t(*POLICY_C).requires_grad_()
    loss, _ = get_dpo_loss("wpo")(make_logps(policy_chosen=pc), beta=beta)
    loss.sum().backward()
    # d/ds_c [w · softplus(−z)] with w constant and z = β(...) is −w·β·σ(−z)
    weights = [math.exp(-6.0), math.exp(-6.5)]
    expected = [-w * beta / (1 + math.exp(z)) for w, z in zip(weights, (0.4, 0.05))]
    torch.testing.assert_close(pc.grad, t(*expected))


def test_dpo_gradient_matches_hand_derivative():
    beta = 5.0
    pc, pr = t(*POLICY_C).requires_grad_(), t(*POLICY_R).requires_grad_()
    loss, _ = get_dpo_loss("dpo_norm")(make_logps(policy_chosen=pc, policy_rejected=pr), beta=beta)
    loss.sum().backward()
    # dℓ/dz = −σ(−z); z depends on s_c through β/n_c and on s_r through −β/n_r
    sig = [1 / (1 + math.exp(z)) for z in (7.5, -2.0)]
    torch.testing.assert_close(pc.grad, t(*[-s * beta / n for s, n in zip(sig, N_C)]))
    torch.testing.assert_close(pr.grad, t(*[s * beta / n for s, n in zip(sig, N_R)]))


def test_metrics_are_detached():
    pc = t(*POLICY_C).requires_grad_()
    for name in DPO_LOSSES:
        _, metrics = get_dpo_loss(name)(make_logps(policy_chosen=pc), beta=0.1)
        assert all(not v.requires_grad for v in metrics.values()), name
        assert {"chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"} <= metrics.keys()


def test_low_precision_inputs_are_upcast():
    logps = make_logps(
        policy_chosen=t(*POLICY_C).bfloat16(),
        policy_rejected=t(*POLICY_R).bfloat16(),
        ref_chosen=t(*REF_C).bfloat16(),
        ref_rejected=t(*REF_R).bfloat16(),
    )
    loss, _ = get_dpo_loss("dpo")(logps, beta=0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, t(neg_log_sigmoid(0.4), neg_log_sigmoid(0.05)).float())


def test_reference_losses_need_reference_logps():
    logps = make_logps(ref_chosen=None, ref_rejected=None)
    for name in ("dpo", "dpo_norm", "ipo", "wpo"):
        with pytest.raises(ValueError, match="reference"):
            get_dpo_loss(name)(logps, beta=0.1)
    with pytest.raises(ValueError, match="both"):
        make_logps(ref_chosen=None)
    with pytest.raises(ValueError, match="shape"):
        make_logps(rejected_tokens=torch.tensor([1, 2, 3]))


def test_registry_lookup_and_errors():
    assert set(DPO_LOSSES) == {"dpo", "dpo_norm", "simpo", "ipo", "wpo"}
    assert [needs_reference(n) for n in ("dpo", "dpo_norm", "ipo", "wpo", "simpo")] == [True] * 4 + [False]
    with pytest.raises(UnknownNameError) as err:
        get_dpo_loss("sigmoid_norm")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "unknown DPO loss 'sigmoid_norm'; registered: dpo, dpo_norm, ipo, simpo, wpo"
    with pytest.raises(KeyError, match="registered: dpo"):
        needs_reference("orpo")
    with pytest.raises(ValueError, match="already registered"):
        register_dpo_loss("dpo")(lambda logps, **kw: None)


def test_register_new_loss():
    @register_dpo_loss("hinge_test", reference_free=True)
    def hinge(logps, *, beta, label_smoothing=0.0, **kwargs):
        pc, pr = logps.policy(normalize=False)
        return torch.relu(1 - beta * (pc - pr)), {}

    try:
        assert get_dpo_loss("hinge_test") is hinge
        assert needs_reference("hinge_test") is False
        loss, _ = get_dpo_loss("hinge_test")(make_logps(), beta=0.1)
        torch.testing.assert_close(loss, t(1 - 0.1 * 6.0, 1 - 0.1 * -15.5))
    finally:
        unregister_dpo_loss("hinge_test")
    assert "hinge_test" not in DPO_LOSSES
    with pytest.raises(UnknownNameError):
        needs_reference("hinge_test")
