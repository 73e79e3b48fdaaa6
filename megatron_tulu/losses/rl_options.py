"""RL options users of open-instruct / verl expect, as pure loss-side tensor functions.

None of these is wired into the RLVR trainer or its config yet: each is a building block with
unit tests against hand-computed values (``tests/unit/losses/test_rl_options.py``). Defaults
proposed for wiring (off unless Tülu 3 used it) are given per function. Shapes follow
``megatron_tulu.losses.ppo``: ``b`` rollouts of ``T`` response positions, ``mask [b, T]`` 1 on
valid response tokens (one contiguous span per row).

* ``truncated_importance_weights``: truncated importance sampling (TIS) against the rollout
  engine's log-probs, correcting the mismatch between vLLM's sampling distribution and the
  learner's (bf16/FP8 rollouts, different kernels). Yao et al. 2025, "Your Efficient RL Framework
  Secretly Brings You Off-Policy RL Training" (fengyao.notion.site/off-policy-rl); verl
  ``tis_imp_ratio_cap``, open-instruct ``truncated_importance_sampling_ratio_cap``. Off in Tülu 3.
* ``clipped_policy_loss``: PPO's clipped surrogate with asymmetric bounds ``(1 − ε_low, 1 + ε_high)``
  ("clip-higher", DAPO: Yu et al. 2025, arXiv 2503.14476 §3.1; verl ``clip_ratio_low/high``).
  Tülu 3: ε_low = ε_high = 0.2.
* ``k3_kl_loss``: KL to the reference as a loss term (k3, clamped), the GRPO alternative to the
  per-token reward penalty (Shao et al. 2024, arXiv 2402.03300 Eq. 4; verl ``use_kl_loss`` with
  ``kl_loss_type=low_var_kl``, clamped as there). Tülu 3 used the reward penalty (off here).
* ``nonconstant_group_mask``: drop GRPO groups whose rewards are all equal (their advantages are 0,
  they only dilute the batch): DAPO's dynamic sampling (§3.2). Off in Tülu 3.
* ``mask_truncated``: exclude completions cut at the length limit from the loss (DAPO's overlong
  filtering, §3.4). Tülu 3 instead gave them the −10 no-EOS reward (off here).
* ``aggregate_loss``: loss normalisation by token (token-mean over the batch: DAPO §3.3, Tülu 3's
  and today's default), by sequence (mean of per-sequence token-means: the original GRPO /
  PPO-per-sample form) or by a constant (sum divided by ``sequences × constant``: Dr. GRPO, Liu et
  al. 2025, arXiv 2503.20783, removing the length bias).
* ``place_scores``: where the verifier score enters the per-token rewards. ``"last_token"`` (today,
  the textbook placement) or ``"after_last"``, the placement of Tülu 3's own PPO script
  (open-instruct ``ppo_vllm_thread_ray_gtrl.py``, from TRL's PPOv2 trainer): the score sits one
  position after the last response token (when the response is shorter than ``T``) and that
  position joins the GAE span, so the value there is bootstrapped. Reproduction option.
* ``group_advantages``: GRPO group normalisation with the std with Bessel's correction
  (``torch.std``; open-instruct, TRL) or without (population std, as ``np.std``), or none (Dr. GRPO).
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.ppo import kl_penalty, last_valid_index

LOSS_AGGREGATIONS = ("token", "sequence", "constant")
SCORE_PLACEMENTS = ("last_token", "after_last")
GROUP_STDS = ("unbiased", "population", "none")


def _fmask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(like.dtype)


def truncated_importance_weights(
    learner_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float = 2.0
) -> Tensor:
    """Per-token TIS weights ``min(exp(logπ_learner − logπ_rollout), cap)``, 0 off the mask.

    ``learner_logp`` are the learner's log-probs of the sampled tokens under the policy that
    generated them (the "old" log-probs), ``rollout_logp`` what vLLM reported while sampling.
    Multiply the per-token policy loss by these weights. No gradient. ``cap`` > 0 (verl default 2).
    """
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    with torch.no_grad():
        ratio = torch.exp(learner_logp - rollout_logp).clamp(max=cap)
        return ratio * _fmask(mask, ratio)


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    weights: Tensor | None = None,
) -> Tensor:
    """Per-token clipped surrogate ``max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))`` (× ``weights``).

    ``ρ = exp(logp − old_logp)``; 0 off the mask; not reduced (see ``aggregate_loss``).
    ``weights`` are e.g. ``truncated_importance_weights``.
    """
    if not 0 <= eps_low < 1 or eps_high < 0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach()
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))
    if weights is not None:
        loss = loss * weights.detach()
    return loss * _fmask(mask, loss)


def k3_kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, clamp: float = 10.0) -> Tensor:
    """Per-token k3 KL ``exp(d) − d − 1`` with ``d = ref_logp − logp`` (clamped to ±20 before the
    exponential), the result clamped to ``[−clamp, clamp]``; differentiable in ``logp``.

    Add ``coef × aggregate_loss(k3_kl_loss(...))`` to the policy loss (verl's kl_loss_coef, 0.001).
    """
    d = (ref_logp.detach() - logp).clamp(-20.0, 20.0)
    k3 = (torch.exp(d) - d - 1.0).clamp(-clamp, clamp)
    return k3 * _fmask(mask, k3)


def nonconstant_group_mask(scores: Tensor, group_size: int) -> Tensor:
    """``[N·G]`` bool: True for samples whose group (``G`` consecutive scores) has unequal rewards."""
    if group_size < 1 or scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.reshape(-1, group_size)
    varied = (grouped != grouped[:, :1]).any(dim=1)
    return varied.repeat_interleave(group_size)


def mask_truncated(mask: Tensor, stopped: Tensor) -> Tensor:
    """``mask`` with the rows of truncated completions (``stopped[i]`` False) zeroed."""
    return mask * stopped.to(mask.dtype).unsqueeze(1)


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str = "token", constant: float | None = None
) -> tuple[Tensor, Tensor]:
    """``(numerator, denominator)`` of the batch loss (Megatron's per-token contract: sum both over
    micro-batches and ranks, divide once).

    * ``"token"``: (Σ loss over valid tokens, number of valid tokens).
    * ``"sequence"``: (Σ over rows with a token of their token-mean, number of such rows).
    * ``"constant"``: (Σ loss, rows × ``constant``), e.g. ``constant`` = the generation budget.
    """
    m = _fmask(mask, per_token)
    total = (per_token * m).sum()
    if mode == "token":
        return total, m.sum()
    counts = m.sum(dim=1)
    has_tokens = counts > 0
    if mode == "sequence":
        per_row = (per_token * m).sum(dim=1) / counts.clamp(min=1)
        return per_row[has_tokens].sum(), has_tokens.sum().to(per_token.dtype)
    if mode == "constant":
        if constant is None or constant <= 0:
            raise ValueError(f"mode 'constant' needs a positive constant, got {constant}")
        return total, torch.tensor(per_token.shape[0] * float(constant), dtype=per_token.dtype)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {LOSS_AGGREGATIONS}")


def place_scores(score: Tensor, mask: Tensor, placement: str = "last_token") -> tuple[Tensor, Tensor]:
    """``(score_rewards [b, T], gae_mask [b, T])``: where each row's score goes, and the span GAE runs on.

    ``"last_token"``: at the last valid token; ``gae_mask`` is ``mask``. ``"after_last"``: one position
    after it when that position exists (the row is shorter than ``T``), else at the last token;
    ``gae_mask`` is ``mask`` extended to that position. Add the KL rewards (computed on ``mask``)
    to ``score_rewards`` and run GAE on ``gae_mask``. Rows without tokens get nothing.
    """
    if placement not in SCORE_PLACEMENTS:
        raise ValueError(f"unknown score placement {placement!r}; expected one of {SCORE_PLACEMENTS}")
    last = last_valid_index(mask)
    position = last
    if placement == "after_last":
        position = torch.where((last >= 0) & (last + 1 < mask.shape[1]), last + 1, last)
    dtype = torch.promote_types(score.dtype, torch.float32)
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    has = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has]
    rewards[rows, position[has]] = score.to(dtype)[has]
    gae_mask = mask.clone()
    gae_mask[rows, position[has]] = 1
    return rewards, gae_mask


def token_rewards_placed(
    score: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kl_kind: str = "k1",
    placement: str = "last_token",
) -> tuple[Tensor, Tensor]:
    """``(rewards, gae_mask)``: ``−β·KL_t`` on ``mask`` plus the score placed by ``place_scores``."""
    with torch.no_grad():
        kl = -beta * kl_penalty(logp, ref_logp, kl_kind) * _fmask(mask, logp)
        placed, gae_mask = place_scores(score, mask, placement)
        return kl + placed.to(kl.dtype), gae_mask


def group_advantages(scores: Tensor, group_size: int, std: str = "unbiased", eps: float = 1e-6) -> Tensor:
    """GRPO advantages ``(s − mean_g) / (std_g + eps)``; ``std`` ``"unbiased"`` (Bessel, n − 1),
    ``"population"`` (n) or ``"none"`` (centred only). A one-sample group has std 0."""
    if std not in GROUP_STDS:
        raise ValueError(f"unknown group std {std!r}; expected one of {GROUP_STDS}")
    if group_size < 1 or scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    with torch.no_grad():
        grouped = scores.reshape(-1, group_size).to(torch.promote_types(scores.dtype, torch.float32))
        centered = grouped - grouped.mean(dim=1, keepdim=True)
        if std == "none":
            return centered.reshape(-1)
        if group_size == 1:
            spread = torch.zeros_like(centered)
        else:
            spread = grouped.std(dim=1, keepdim=True, correction=1 if std == "unbiased" else 0)
        return (centered / (spread + eps)).reshape(-1)
