"""PPO / GRPO pieces for Tülu 3 RLVR as pure, mask-aware tensor functions.

Shapes: ``b`` rollouts of ``T`` response positions. ``mask [b, T]`` is 1 on valid response
tokens: one contiguous span per row (left offsets and right padding are fine), ending at the
response's last token. Nothing here talks to torch.distributed; losses come back as
:class:`MaskedLoss` so the trainer can normalise over the global batch (Megatron's per-token
contract: the loss function returns ``(numerator, denominator)``).

Tülu 3 recipe (paper §6.2, Tab. 21; open-instruct ``ppo_vllm_thread_ray_gtrl.py``):

* rewards ``r_t = −β·KL_t`` ("kl1": ``KL_t = logπ_t − logπref_t``) plus the verifier score at the
  last response token (the no-EOS −10 replacement is applied upstream by
  ``megatron_tulu.rewards.score_sample`` / ``compute_rewards``); rewards are *not* whitened;
* GAE with γ = 1, λ = 0.95; returns = advantages + values (before whitening); advantages are
  then whitened over the valid tokens;
* clipped surrogate with ε = 0.2; value loss ``0.5·max((V−R)², (Vclip−R)²)`` with value clip 0.2,
  scaled by c1 = 0.1 in the trainer (``MaskedLoss.scale``).

The advantage estimators built on :func:`gae` and :func:`grpo_advantages`, and what each needs,
are registry entries in :mod:`megatron_tulu.losses.estimators`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KL_KINDS = ("k1", "k2", "k3")
_KL_ALIASES = {"kl1": "k1", "kl2": "k2", "kl3": "k3"}


@dataclass(frozen=True)
class MaskedLoss:
    """A token-level loss as (sum over valid tokens, number of valid tokens).

    ``mean`` is the local token-mean. Across micro-batches and data-parallel ranks, add the
    ``loss_sum``s and ``num_tokens`` separately and divide once (:meth:`combine`), which gives every
    token of the global batch the same weight however the batch was split.
    """

    loss_sum: Tensor
    num_tokens: Tensor

    @property
    def mean(self) -> Tensor:
        return self.loss_sum / self.num_tokens.clamp(min=1).to(self.loss_sum.dtype)

    def scale(self, coef: float) -> MaskedLoss:
        """The loss times ``coef`` (e.g. the value coefficient c1), same token count."""
        return MaskedLoss(self.loss_sum * coef, self.num_tokens)

    def as_tuple(self) -> tuple[Tensor, Tensor]:
        """``(numerator, denominator)`` for Megatron's per-token loss contract."""
        return self.loss_sum, self.num_tokens

    @staticmethod
    def combine(parts: list[MaskedLoss]) -> MaskedLoss:
        """Sum numerators and denominators of several micro-batches."""
        return MaskedLoss(
            torch.stack([p.loss_sum for p in parts]).sum(), torch.stack([p.num_tokens for p in parts]).sum()
        )


def _fmask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(like.dtype if like.is_floating_point() else torch.float32)


def masked_sum_and_count(per_token: Tensor, mask: Tensor) -> MaskedLoss:
    """``MaskedLoss(Σ_valid x, #valid)``."""
    return MaskedLoss((per_token * _fmask(mask, per_token)).sum(), mask.sum().to(torch.int64))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ x·m / Σ m`` over ``dim`` (all if None); 0 where there are no valid tokens."""
    m = _fmask(mask, x)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over the valid tokens; ``unbiased`` applies Bessel's ``n/(n−1)`` (as TRL and
    open-instruct's ``masked_var``); with fewer than two valid tokens the variance is 0."""
    m = _fmask(mask, x)
    centered = (x - masked_mean(x, mask)) * m
    n = m.sum()
    var = (centered**2).sum() / n.clamp(min=1)
    if unbiased:
        var = var * torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x − μ)/√(σ² + eps)`` with μ, σ² (unbiased) over valid tokens; ``+ μ`` back when not
    ``shift_mean``. Masked positions are set to 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * _fmask(mask, x)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL estimate of ``π ‖ πref`` from sampled-token log-probs (Schulman's k1–k3).

    With ``d = logp − ref_logp``: k1 = ``d``; k2 = ``½·d²``; k3 = ``exp(−d) + d − 1``
    (= ``exp(ref − logp) − (ref − logp) − 1``, non-negative). ``"kl1"`` etc. are aliases.
    """
    kind = _KL_ALIASES.get(kind, kind)
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def last_valid_index(mask: Tensor) -> Tensor:
    """``[b]`` index of the last valid position of each row; −1 for rows without one."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=-1).values


def token_rewards(
    score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float, kl_kind: str = "k1"
) -> Tensor:
    """Per-token rewards ``[b, T]`` (no gradient): ``−β·KL_t`` on valid tokens, plus ``score[i]``
    at the last valid token of row ``i``; 0 on masked positions."""
    with torch.no_grad():
        m = _fmask(mask, logp)
        rewards = -beta * kl_penalty(logp, ref_logp, kl_kind) * m
        last = last_valid_index(mask)
        bonus = torch.where(last >= 0, score.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
        return rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), bonus.unsqueeze(1))


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (no gradient); returns ``(advantages, returns)`` ``[b, T]``.

    ``δ_t = r_t + γ·V_{t+1} − V_t``, ``A_t = δ_t + γλ·A_{t+1}``, with ``V`` and ``A`` taken as 0
    past the last valid token (the episode ends there); ``returns = A + V``. Both are 0 on masked
    positions.
    """
    with torch.no_grad():
        m = _fmask(mask, values)
        v = values * m
        r = rewards * m
        advantages = torch.zeros_like(v)
        running = torch.zeros_like(v[:, 0])
        next_value = torch.zeros_like(v[:, 0])
        for t in reversed(range(v.shape[1])):
            delta = r[:, t] + gamma * next_value - v[:, t]
            running = (delta + gamma * lam * running) * m[:, t]
            advantages[:, t] = running
            next_value = v[:, t]
        return advantages, (advantages + v) * m


LOSS_AGGREGATIONS = ("token", "sequence", "constant")


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

    ``ρ = exp(logp − old_logp)``; 0 off the mask; not reduced (see :func:`aggregate_loss`).
    ``ε_high > ε_low`` is DAPO's clip-higher; ``weights`` are e.g. truncated importance weights.
    """
    if not 0 <= eps_low < 1 or eps_high < 0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach()
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))
    if weights is not None:
        loss = loss * weights.detach()
    return loss * _fmask(mask, loss)


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str = "token", constant: float | None = None
) -> tuple[Tensor, Tensor]:
    """``(numerator, denominator)`` of the batch loss (Megatron's per-token contract: sum both over
    micro-batches and ranks, divide once).

    * ``"token"``: (Σ loss over valid tokens, number of valid tokens) — Tülu 3, DAPO §3.3.
    * ``"sequence"``: (Σ over rows with a token of their token-mean, number of such rows) — the
      original GRPO / per-sample PPO form.
    * ``"constant"``: (Σ loss, rows × ``constant``), e.g. ``constant`` = the generation budget —
      Dr. GRPO (Liu et al. 2025, arXiv 2503.20783), without the length bias.
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


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    weights: Tensor | None = None,
    aggregation: str = "token",
    constant: float | None = None,
) -> tuple[MaskedLoss, dict[str, Tensor]]:
    """PPO clipped surrogate (:func:`clipped_policy_loss`; ``clip_eps_high`` defaults to
    ``clip_eps``), aggregated by :func:`aggregate_loss` into ``MaskedLoss(numerator, denominator)``.

    Metrics (token-means over valid tokens, no gradient): ``clip_fraction`` (tokens where the
    clipped term is strictly larger, i.e. the gradient is cut), ``approx_kl`` = mean of
    ``½·(logp − old)²`` (the estimator TRL and open-instruct log), ``ratio_mean``.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    per_token = clipped_policy_loss(logp, old_logp, advantages, mask, clip_eps, high, weights)
    loss = MaskedLoss(*aggregate_loss(per_token, mask, aggregation, constant))
    with torch.no_grad():
        log_ratio = logp - old_logp
        ratio = torch.exp(log_ratio)
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + high)
        metrics = {
            "clip_fraction": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[MaskedLoss, dict[str, Tensor]]:
    """Clipped value loss per token ``½·max((V − R)², (V_clip − R)²)``,
    ``V_clip = V_old + clip(V − V_old, −clip, clip)``. Multiply by c1 with ``MaskedLoss.scale``.

    Metrics: ``value_clip_fraction`` (tokens where the clipped term is strictly larger),
    ``explained_variance`` of the returns by ``V``.
    """
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = masked_sum_and_count(0.5 * torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "value_clip_fraction": masked_mean((clipped > unclipped).to(unclipped.dtype), mask),
            "explained_variance": explained_variance(values, returns, mask),
        }
    return loss, metrics


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 − Var(R − V)/Var(R)`` over valid tokens (biased variances); NaN if Var(R) = 0."""
    var_returns = masked_var(returns, mask, unbiased=False)
    ratio = masked_var(returns - values.detach(), mask, unbiased=False) / var_returns
    return torch.where(var_returns > 0, 1.0 - ratio, torch.full_like(ratio, float("nan")))


GROUP_STDS = ("unbiased", "population", "none")


def grpo_advantages(scores: Tensor, group_size: int, eps: float = 1e-6, std: str = "unbiased") -> Tensor:
    """Group-normalised advantages ``[N·G]`` (GRPO, Shao et al. 2024, arXiv 2402.03300).

    ``scores`` holds ``G = group_size`` consecutive samples per prompt. ``A_i = (s_i − mean_g) /
    (std_g + eps)`` with ``std`` ``"unbiased"`` (Bessel, n − 1: ``torch.std``, as open-instruct
    and TRL), ``"population"`` (n, as ``np.std``) or ``"none"`` (centred only: Dr. GRPO). A group
    of one sample has std 0; groups with identical scores get exactly 0.
    """
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


def broadcast_to_tokens(per_sample: Tensor, mask: Tensor) -> Tensor:
    """``[b] → [b, T]``: each sample's value on its valid tokens, 0 elsewhere."""
    return per_sample.unsqueeze(1) * _fmask(mask, per_sample)
