"""DPO-family preference losses as pure tensor functions.

Every loss has the signature::

    fn(logps: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0, **kwargs)
        -> tuple[Tensor, dict[str, Tensor]]

and returns the per-pair loss ``[b]`` (not reduced: the trainer decides how to average over
micro-batches and data-parallel ranks) and per-pair detached metrics ``[b]``. Options a loss does
not use (e.g. ``gamma_beta_ratio`` for ``dpo``) are ignored, so one config can drive any loss.

Notation: ``s_c, s_r`` are the policy's summed response log-probs of the chosen / rejected
response, ``S_c, S_r`` the reference's, ``n_c, n_r`` the response token counts, and
``a_c = s_c / n_c`` etc. the per-token means. ``σ`` is the logistic function and ``ε`` the
label smoothing. The conservative ("cDPO", Mitchell 2023) sigmoid loss of a logit ``z`` is::

    ℓ_ε(z) = −(1 − ε)·log σ(z) − ε·log σ(−z)

Losses (``needs_reference`` is False only for ``simpo``):

* ``dpo`` (Tülu 3 Eq. 5; Rafailov et al. 2023): ``ℓ_ε(β·[(s_c − S_c) − (s_r − S_r)])``.
* ``dpo_norm`` (Tülu 3 Eq. 6, the variant Tülu 3 uses with β = 5; open-instruct ``dpo_norm``,
  TRL ``sigmoid_norm``): ``ℓ_ε(β·[(a_c − A_c) − (a_r − A_r)])``, i.e. policy *and* reference sums
  divided by their own response lengths.
* ``simpo`` (Meng et al. 2024, arXiv 2405.14734; formula as in open-instruct / the SimPO code):
  ``ℓ_ε(β·(a_c − a_r) − β·gamma_beta_ratio)``, reference-free, default ``gamma_beta_ratio`` 0.5.
* ``ipo`` (Azar et al. 2023, arXiv 2310.12036, Eq. 17 with τ = β): ``(h − 1/(2β))²`` with
  ``h = (a_c − A_c) − (a_r − A_r)``. Like TRL's ``loss_type="ipo"``, the log-probs are
  length-normalized by default; ``length_normalize=False`` uses the sums. No label smoothing.
* ``wpo`` (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization",
  arXiv 2406.11827): the ``dpo`` loss times a per-pair weight
  ``w = min(1, exp(m_c + m_r))`` computed without gradient, where ``m_c, m_r`` are the policy's
  per-token mean log-probs of the chosen / rejected response. ``exp(m)`` is the length-normalized
  sequence probability, so ``w`` is the product of the two (the paper's weight). The clamp at 1
  follows open-instruct's ``wpo_loss`` (which, unlike this loss, lets the gradient flow through
  the weight); TRL does *not* clamp: TRL 1.16's ``use_weighting`` multiplies the loss by the
  unclamped ``exp(m_c)·exp(m_r)``, computed without gradient, with ``m`` the "sampled alignment"
  mean in which each token's log-prob is reduced by ``log Σ_v π(v)²`` (so ``w`` can exceed 1
  there). With plain means ``w ≤ 1`` always (``m ≤ 0``), so the clamp only matters for such
  overrides. By default ``m = s / n`` (open-instruct); pass ``policy_chosen_token_mean`` /
  ``policy_rejected_token_mean`` to use another per-token mean, e.g. TRL's.

Metrics per pair: ``chosen_reward``, ``rejected_reward`` (β × the log-ratio the loss uses; for the
reference-free ``simpo`` β × the policy's mean log-prob), ``reward_margin``, ``reward_accuracy``
(1.0 where chosen_reward > rejected_reward), ``policy_chosen_logps`` / ``policy_rejected_logps``
(the policy log-probs the loss uses: sums for ``dpo``/``wpo``, per-token means for the
normalized losses), plus ``policy_weight`` for ``wpo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from megatron_tulu.losses.registry import lookup, register_into

DPOLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

DPO_LOSSES: dict[str, DPOLossFn] = {}
_REFERENCE_FREE: set[str] = set()


@dataclass(frozen=True)
class PreferenceLogps:
    """Per-pair log-prob statistics of a preference batch; every tensor has shape ``[b]``.

    ``policy_*`` / ``ref_*`` are sums of response-token log-probs (``ref_*`` may be None for
    reference-free losses); ``*_tokens`` are the response token counts. The optional
    ``policy_*_token_mean`` tensors override the per-token means that ``wpo`` weights by.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    policy_chosen_token_mean: Tensor | None = None
    policy_rejected_token_mean: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.policy_chosen.shape
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"PreferenceLogps.{f.name} has shape {tuple(value.shape)}, expected {tuple(shape)}"
                )
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("ref_chosen and ref_rejected must both be given or both be None")

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None

    def policy(self, normalize: bool) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) policy log-probs: sums, or per-token means when ``normalize``."""
        return self._pair(self.policy_chosen, self.policy_rejected, normalize)

    def reference(self, normalize: bool) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) reference log-probs: sums, or per-token means when ``normalize``."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs reference log-probs, but PreferenceLogps.ref_* are None")
        return self._pair(self.ref_chosen, self.ref_rejected, normalize)

    def policy_token_means(self) -> tuple[Tensor, Tensor]:
        """Per-token mean policy log-probs for WPO: the override fields, else sum / count."""
        chosen, rejected = self.policy(normalize=True)
        if self.policy_chosen_token_mean is not None:
            chosen = _float(self.policy_chosen_token_mean)
        if self.policy_rejected_token_mean is not None:
            rejected = _float(self.policy_rejected_token_mean)
        return chosen, rejected

    def _pair(self, chosen: Tensor, rejected: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
        chosen, rejected = _float(chosen), _float(rejected)
        if normalize:
            chosen = chosen / self.chosen_tokens.to(chosen.dtype).clamp(min=1)
            rejected = rejected / self.rejected_tokens.to(rejected.dtype).clamp(min=1)
        return chosen, rejected


def _float(x: Tensor) -> Tensor:
    """At least float32 (float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def register_dpo_loss(name: str, *, reference_free: bool = False) -> Callable[[DPOLossFn], DPOLossFn]:
    """Decorator adding a loss to :data:`DPO_LOSSES`; ``reference_free`` marks losses that never
    read ``PreferenceLogps.ref_*`` (see :func:`needs_reference`)."""
    register = register_into(DPO_LOSSES, name, "DPO loss")

    def decorator(fn: DPOLossFn) -> DPOLossFn:
        register(fn)
        if reference_free:
            _REFERENCE_FREE.add(name)
        return fn

    return decorator


def unregister_dpo_loss(name: str) -> None:
    """Remove a registered loss (plugins and tests); unknown names raise ``UnknownNameError``."""
    get_dpo_loss(name)
    del DPO_LOSSES[name]
    _REFERENCE_FREE.discard(name)


def get_dpo_loss(name: str) -> DPOLossFn:
    """The registered loss ``name``; raises ``UnknownNameError`` (a KeyError) listing the names."""
    return lookup(DPO_LOSSES, name, "DPO loss")


def needs_reference(name: str) -> bool:
    """Whether loss ``name`` needs reference-model log-probs (cached or from a live model)."""
    get_dpo_loss(name)
    return name not in _REFERENCE_FREE


def sigmoid_preference_loss(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``−(1 − ε)·log σ(z) − ε·log σ(−z)`` elementwise (conservative DPO, ε ∈ [0, 0.5])."""
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def _metrics(
    chosen_reward: Tensor, rejected_reward: Tensor, policy_chosen: Tensor, policy_rejected: Tensor
) -> dict[str, Tensor]:
    chosen_reward, rejected_reward = chosen_reward.detach(), rejected_reward.detach()
    return {
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "reward_margin": chosen_reward - rejected_reward,
        "reward_accuracy": (chosen_reward > rejected_reward).to(chosen_reward.dtype),
        "policy_chosen_logps": policy_chosen.detach(),
        "policy_rejected_logps": policy_rejected.detach(),
    }


def _log_ratio_sigmoid(
    logps: PreferenceLogps, beta: float, label_smoothing: float, normalize: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    pc, pr = logps.policy(normalize)
    rc, rr = logps.reference(normalize)
    chosen_reward, rejected_reward = beta * (pc - rc), beta * (pr - rr)
    loss = sigmoid_preference_loss(chosen_reward - rejected_reward, label_smoothing)
    return loss, _metrics(chosen_reward, rejected_reward, pc, pr)


@register_dpo_loss("dpo")
def dpo_loss(
    logps: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0, **kwargs: object
) -> tuple[Tensor, dict[str, Tensor]]:
    """Standard DPO: ``ℓ_ε(β·[(s_c − S_c) − (s_r − S_r)])`` on summed log-probs."""
    return _log_ratio_sigmoid(logps, beta, label_smoothing, normalize=False)


@register_dpo_loss("dpo_norm")
def dpo_norm_loss(
    logps: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0, **kwargs: object
) -> tuple[Tensor, dict[str, Tensor]]:
    """Length-normalized DPO (Tülu 3 Eq. 6): ``ℓ_ε(β·[(s_c/n_c − S_c/n_c) − (s_r/n_r − S_r/n_r)])``."""
    return _log_ratio_sigmoid(logps, beta, label_smoothing, normalize=True)


@register_dpo_loss("simpo", reference_free=True)
def simpo_loss(
    logps: PreferenceLogps,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma_beta_ratio: float = 0.5,
    **kwargs: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO: ``ℓ_ε(β·(s_c/n_c − s_r/n_r) − β·gamma_beta_ratio)``; rewards are ``β·s/n``."""
    pc, pr = logps.policy(normalize=True)
    chosen_reward, rejected_reward = beta * pc, beta * pr
    loss = sigmoid_preference_loss(chosen_reward - rejected_reward - beta * gamma_beta_ratio, label_smoothing)
    return loss, _metrics(chosen_reward, rejected_reward, pc, pr)


@register_dpo_loss("ipo")
def ipo_loss(
    logps: PreferenceLogps,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    length_normalize: bool = True,
    **kwargs: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO (Azar et al. Eq. 17, τ = β): ``(h − 1/(2β))²``, ``h`` the log-ratio difference of
    per-token means (sums when ``length_normalize=False``)."""
    if label_smoothing:
        raise ValueError("ipo does not support label_smoothing")
    pc, pr = logps.policy(length_normalize)
    rc, rr = logps.reference(length_normalize)
    h = (pc - rc) - (pr - rr)
    loss = (h - 1.0 / (2.0 * beta)) ** 2
    return loss, _metrics(beta * (pc - rc), beta * (pr - rr), pc, pr)


@register_dpo_loss("wpo")
def wpo_loss(
    logps: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0, **kwargs: object
) -> tuple[Tensor, dict[str, Tensor]]:
    """WPO: ``w · ℓ_ε(β·[(s_c − S_c) − (s_r − S_r)])`` with ``w = min(1, exp(m_c + m_r))`` detached."""
    loss, metrics = _log_ratio_sigmoid(logps, beta, label_smoothing, normalize=False)
    mc, mr = logps.policy_token_means()
    weight = torch.exp(mc + mr).clamp(max=1.0).detach()
    metrics["policy_weight"] = weight
    return weight * loss, metrics
