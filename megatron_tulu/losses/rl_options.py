"""RL options users of open-instruct / verl expect, as pure loss-side tensor functions.

Wired into the RLVR trainer through ``rlvr.*`` config fields (each off unless Tülu 3 used it;
README "RL options" lists them with defaults and sources). Shapes follow
``megatron_tulu.losses.ppo``: ``b`` rollouts of ``T`` response positions, ``mask [b, T]`` 1 on
valid response tokens (one contiguous span per row). The clipped surrogate with asymmetric
bounds (``clipped_policy_loss``, ``rlvr.clip_eps_high``), the loss normalisation
(``aggregate_loss``, ``rlvr.loss_aggregation``) and the GRPO std (``grpo_advantages``,
``rlvr.grpo_std``) live in :mod:`megatron_tulu.losses.ppo`, whose PPO loss they are.

* ``truncated_importance_weights`` (``rlvr.tis_cap``): truncated importance sampling (TIS)
  against the rollout engine's log-probs, correcting the mismatch between vLLM's sampling
  distribution and the learner's (bf16/FP8 rollouts, different kernels). Yao et al. 2025, "Your
  Efficient RL Framework Secretly Brings You Off-Policy RL Training"
  (fengyao.notion.site/off-policy-rl); verl ``tis_imp_ratio_cap``, open-instruct
  ``truncated_importance_sampling_ratio_cap``. Off in Tülu 3.
* ``k3_kl_loss`` (``rlvr.kl_placement=loss`` with ``kl_kind=k3``): KL to the reference as a loss
  term (k3, clamped), the GRPO alternative to the per-token reward penalty (Shao et al. 2024,
  arXiv 2402.03300 Eq. 4; verl ``use_kl_loss`` with ``kl_loss_type=low_var_kl``, clamped as
  there). Tülu 3 used the reward penalty.
* ``nonconstant_group_mask`` (``rlvr.drop_constant_groups``): drop groups whose rewards are all
  equal (their advantages are 0, they only dilute the batch): DAPO's dynamic sampling (Yu et al.
  2025, arXiv 2503.14476 §3.2), here as a loss mask. Off in Tülu 3.
* ``mask_truncated`` (``rlvr.mask_truncated``): exclude completions cut at the length limit from
  the policy loss (DAPO's overlong filtering, §3.4). Tülu 3 instead gave them the −10 no-EOS
  reward (off here).
* ``place_scores`` / ``token_rewards_placed`` (``rlvr.score_placement``): where the verifier score
  enters the per-token rewards. ``"last_token"`` (the textbook placement, default) or
  ``"after_last"``, the placement of Tülu 3's own PPO script (open-instruct
  ``ppo_vllm_thread_ray_gtrl.py``, from TRL's PPOv2 trainer): the score sits one position after
  the last response token (when the response is shorter than ``T``) and that position joins the
  GAE span, so the value there is bootstrapped. Reproduction option.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.ppo import kl_penalty, last_valid_index, masked_mean

SCORE_PLACEMENTS = ("last_token", "after_last")


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


def k3_kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, clamp: float = 10.0) -> Tensor:
    """Per-token k3 KL ``exp(d) − d − 1`` with ``d = ref_logp − logp`` (clamped to ±20 before the
    exponential), the result clamped to ``[−clamp, clamp]``; differentiable in ``logp``.

    Add ``coef × aggregate_loss(k3_kl_loss(...))`` to the policy loss (verl's kl_loss_coef, 0.001).
    """
    d = (ref_logp.detach() - logp).clamp(-20.0, 20.0)
    k3 = (torch.exp(d) - d - 1.0).clamp(-clamp, clamp)
    return k3 * _fmask(mask, k3)


def kl_loss_per_token(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str) -> Tensor:
    """The per-token KL loss term (``rlvr.kl_placement=loss``): k3 clamped (:func:`k3_kl_loss`,
    verl's low_var_kl), else the plain estimator."""
    if kind == "k3":
        return k3_kl_loss(logp, ref_logp, mask)
    return kl_penalty(logp, ref_logp.detach(), kind) * mask


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


def policy_loss_mask(
    mask: Tensor,
    stopped: Tensor,
    scores: Tensor,
    group_size: int,
    *,
    drop_truncated: bool = False,
    drop_constant_groups: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """The response tokens the policy loss keeps: ``mask`` less truncated completions
    (``drop_truncated``: :func:`mask_truncated`) and groups of equal rewards
    (``drop_constant_groups``: :func:`nonconstant_group_mask`), with the share of the batch each
    option dropped (``rollout/truncated_share``, ``rollout/constant_group_share``)."""
    stats: dict[str, float] = {}
    if drop_truncated:
        mask = mask_truncated(mask, stopped)
        stats["rollout/truncated_share"] = float(1.0 - stopped.float().mean())
    if drop_constant_groups:
        varied = nonconstant_group_mask(scores, group_size)
        mask = mask * varied.to(mask.dtype).unsqueeze(1)
        stats["rollout/constant_group_share"] = float(1.0 - varied.float().mean())
    return mask, stats


def tis_weights(
    learner_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, float]]:
    """:func:`truncated_importance_weights` with their mean (``policy/tis_weight_mean``) and the
    share of tokens at the cap (``policy/tis_capped_share``) over ``mask``."""
    weights = truncated_importance_weights(learner_logp, rollout_logp, mask, cap)
    capped = (learner_logp - rollout_logp) >= torch.log(torch.tensor(cap))
    return weights, {
        "policy/tis_weight_mean": float(masked_mean(weights, mask)),
        "policy/tis_capped_share": float(masked_mean(capped.float(), mask)),
    }


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
