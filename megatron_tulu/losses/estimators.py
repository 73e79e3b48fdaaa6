"""Advantage estimators as registry entries that declare what they need (docs/estimators.md).

An :class:`Estimator` pairs a pure tensor function with its needs: the batch tensors it reads
(``inputs``), the config fields it reads (``options``: keyword -> dotted config field), whether it
needs a value model (``needs_critic``: the trainer builds and trains one) or groups of samples per
prompt (``needs_groups``), and where the KL to the reference goes by default. The trainer and the
config checks ask the entry, never the name; the function is called with exactly its declared
inputs and options::

    fn(**{name: batch[name] for name in inputs}, **{kw: cfg.<field> for kw, field in options})
        -> (advantages [b, T], returns [b, T] | None)

Batch inputs (:data:`BATCH_INPUTS`): ``rewards`` per-token rewards (the score placed, minus β·KL
when the KL is a reward penalty), ``values`` the value model's ``[b, T]`` (critic estimators only),
``scores [b]`` the per-sample verifier rewards, ``mask`` the span the estimator runs on (the response,
one position further with ``rlvr.score_placement=after_last``), ``whiten_mask`` the response tokens.
``returns`` train the value model; critic-free estimators return None.

KL placement: ``reward`` (−β·KL in ``rewards``) reaches only estimators that read ``rewards``;
``loss`` (β·KL added to the policy loss) reaches every one. The KL kind defaults by placement
(:data:`DEFAULT_KL_KIND`: k1 in the reward, k3 in the loss).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from megatron_tulu.losses.ppo import broadcast_to_tokens, gae, grpo_advantages, masked_whiten
from megatron_tulu.losses.registry import lookup, register_into

BATCH_INPUTS = ("rewards", "values", "scores", "mask", "whiten_mask")
# where the KL to the reference goes -> the KL kind it defaults to
DEFAULT_KL_KIND = {"reward": "k1", "loss": "k3"}
KL_PLACEMENTS = tuple(DEFAULT_KL_KIND)

EstimatorFn = Callable[..., tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Estimator:
    """An advantage estimator and its needs (see the module docstring)."""

    fn: EstimatorFn
    inputs: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)  # fn keyword -> config field
    needs_critic: bool = False
    needs_groups: bool = False
    default_kl_placement: str = "loss"

    def __post_init__(self) -> None:
        unknown = [n for n in self.inputs if n not in BATCH_INPUTS]
        if unknown:
            raise ValueError(f"estimator inputs {unknown} are not batch inputs {BATCH_INPUTS}")
        params = inspect.signature(self.fn).parameters
        declared = [*self.inputs, *self.options]
        missing = [n for n in declared if n not in params]
        required = [n for n, p in params.items() if p.default is p.empty and n not in declared]
        problems = [f"declared {missing} are not its parameters"] if missing else []
        problems += [f"its parameters {required} are not declared"] if required else []
        if problems:
            raise ValueError(f"{self.fn.__name__}: " + "; ".join(problems))
        if self.needs_critic and "values" not in self.inputs:
            raise ValueError(f"{self.fn.__name__} needs a critic but does not read values")
        if self.default_kl_placement not in self.kl_placements:
            raise ValueError(
                f"{self.fn.__name__}: default_kl_placement={self.default_kl_placement!r}; "
                f"it can take {self.kl_placements}"
            )

    @property
    def kl_placements(self) -> tuple[str, ...]:
        """Where the KL can go: a reward penalty reaches only an estimator that reads rewards."""
        return KL_PLACEMENTS if "rewards" in self.inputs else ("loss",)

    def estimate(self, batch: Mapping[str, Any], cfg: Any) -> tuple[Tensor, Tensor | None]:
        """``fn`` on exactly its declared batch inputs and config options."""
        return self.fn(
            **{name: batch[name] for name in self.inputs},
            **{kw: config_value(cfg, path) for kw, path in self.options.items()},
        )


def config_value(cfg: Any, path: str) -> Any:
    """``cfg.<a>.<b>`` for ``path`` "a.b"."""
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str, estimator: Estimator) -> Estimator:
    """Add ``estimator`` under ``name`` (the value of ``rlvr.estimator``); a name once only."""
    return register_into(ESTIMATORS, name, "advantage estimator")(estimator)


def get_estimator(name: str) -> Estimator:
    """The estimator ``name``; ``UnknownNameError`` (a KeyError) lists the registered names."""
    return lookup(ESTIMATORS, name, "advantage estimator")


def gae_estimator(
    *,
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    whiten_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """GAE over ``mask``; returns come from the raw advantages, advantages are then whitened
    (Tülu 3) over ``whiten_mask`` (default ``mask``; TRL's PPOv2 runs GAE one position past the
    response but whitens over the response alone)."""
    if values is None:
        raise ValueError("the gae estimator needs values from a value model")
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if whiten:
        advantages = masked_whiten(advantages, mask if whiten_mask is None else whiten_mask)
    return advantages, returns


def grpo_estimator(
    *, scores: Tensor, mask: Tensor, group_size: int, eps: float = 1e-6, std: str = "unbiased"
) -> tuple[Tensor, None]:
    """GRPO: group-normalised scores broadcast to every valid token; no value model, no returns."""
    return broadcast_to_tokens(grpo_advantages(scores, group_size, eps, std), mask), None


register_estimator(
    "gae",  # PPO with a value model (Tülu 3): -β·KL in the per-token rewards
    Estimator(
        gae_estimator,
        inputs=("rewards", "values", "mask", "whiten_mask"),
        options={"gamma": "rlvr.gamma", "lam": "rlvr.lam"},
        needs_critic=True,
        default_kl_placement="reward",
    ),
)
register_estimator(
    "grpo",  # group-normalised scores (DeepSeekMath): advantages from the scores alone, KL in the loss
    Estimator(
        grpo_estimator,
        inputs=("scores", "mask"),
        options={"group_size": "rollout.samples_per_prompt", "std": "rlvr.grpo_std"},
        needs_groups=True,
        default_kl_placement="loss",
    ),
)
