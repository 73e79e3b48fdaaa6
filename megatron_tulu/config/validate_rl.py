"""The RLVR settings: refused before anything starts where they cannot apply, and the settings left
to the estimator decided once (``rlvr.kl_placement``, ``rlvr.kl_kind``, ``rlvr.loss_constant``).

The estimator's needs come from its registry entry (:mod:`megatron_tulu.losses.estimators`), never
from its name. Every message names the field and what to set; the error is a
:class:`~megatron_tulu.errors.ConfigError` (one ``error:`` line) and a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Collection

from megatron_tulu.config.schema import RLVROptions, RLVRRunConfig
from megatron_tulu.errors import ConfigError
from megatron_tulu.losses import estimators
from megatron_tulu.losses.estimators import DEFAULT_KL_KIND, KL_PLACEMENTS, Estimator
from megatron_tulu.losses.ppo import GROUP_STDS, KL_KINDS, LOSS_AGGREGATIONS
from megatron_tulu.losses.rl_options import SCORE_PLACEMENTS


class RLConfigError(ConfigError, ValueError):
    """An RL setting that cannot apply."""


def check_rl_config(cfg: RLVRRunConfig, gsm8k_rules: Collection[str]) -> None:
    """Refuse RL settings that cannot apply, before anything starts; then resolve the settings left
    to the estimator into ``cfg.rlvr`` (see :func:`check_rl_options`). ``gsm8k_rules``: the GSM8K
    verifier's rules (``megatron_tulu.rewards.gsm8k.RULES``)."""
    rl, ro, tr = cfg.rlvr, cfg.rollout, cfg.train
    estimator = _estimator(rl.estimator)
    if estimator.needs_groups and ro.samples_per_prompt < 2:
        raise RLConfigError(
            f"rlvr.estimator={rl.estimator} needs rollout.samples_per_prompt >= 2 (its advantages "
            "compare the samples of one prompt)"
        )
    rollouts = rl.prompts_per_step * ro.samples_per_prompt
    if tr.global_batch_size not in (0, rollouts):
        raise RLConfigError(
            f"train.global_batch_size={tr.global_batch_size}, but an RLVR step trains on rlvr.prompts_per_step x "
            f"rollout.samples_per_prompt = {rl.prompts_per_step} x {ro.samples_per_prompt} = {rollouts} rollouts; "
            f"set train.global_batch_size={rollouts} (or 0)"
        )
    seq = ro.max_prompt_len + ro.max_new_tokens
    for name, value in (("train.seq_length", tr.seq_length), ("data.max_seq_len", cfg.data.max_seq_len)):
        if value not in (0, seq):
            raise RLConfigError(
                f"{name}={value}, but RLVR rows are rollout.max_prompt_len + rollout.max_new_tokens = {seq} tokens; "
                f"set {name}={seq} (or 0)"
            )
    if rl.reward_workers < 1:
        raise RLConfigError(f"rlvr.reward_workers must be >= 1, got {rl.reward_workers}")
    if rl.gsm8k_rule not in gsm8k_rules:
        raise RLConfigError(f"rlvr.gsm8k_rule must be one of {list(gsm8k_rules)}, got {rl.gsm8k_rule!r}")
    if rl.kl_kind is not None and rl.kl_kind not in KL_KINDS:
        raise RLConfigError(f"rlvr.kl_kind must be {', '.join(KL_KINDS)} or null, got {rl.kl_kind!r}")
    check_rl_options(cfg)


def check_rl_options(cfg: RLVRRunConfig) -> None:
    """The RL options (docs/rl.md "RL options"): known values, in range, and only where they can
    apply; then ``rlvr.kl_placement`` (null: the estimator's default), ``rlvr.kl_kind`` (null: by
    placement, :data:`~megatron_tulu.losses.estimators.DEFAULT_KL_KIND`) and ``rlvr.loss_constant``
    (null with ``loss_aggregation=constant``: ``rollout.max_new_tokens``) are written back resolved,
    so the trainer reads them and never works them out again."""
    rl, ro = cfg.rlvr, cfg.rollout
    estimator = _estimator(rl.estimator)
    choices = (
        ("kl_placement", rl.kl_placement, (*KL_PLACEMENTS, None)),
        ("loss_aggregation", rl.loss_aggregation, LOSS_AGGREGATIONS),
        ("score_placement", rl.score_placement, SCORE_PLACEMENTS),
        ("grpo_std", rl.grpo_std, GROUP_STDS),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise RLConfigError(f"rlvr.{name} must be one of {shown}; got {value!r}")
    placement = rl.kl_placement or estimator.default_kl_placement
    if placement not in estimator.kl_placements:
        raise RLConfigError(
            f"rlvr.kl_placement={placement} cannot apply under rlvr.estimator={rl.estimator} (its advantages "
            f"do not read the per-token rewards); use kl_placement={estimator.default_kl_placement} (or null)"
        )
    if rl.score_placement != "last_token" and not estimator.needs_critic:
        critics = "|".join(n for n, e in sorted(estimators.ESTIMATORS.items()) if e.needs_critic)
        raise RLConfigError(
            f"rlvr.score_placement={rl.score_placement} places the score for a value model to bootstrap; "
            f"it needs rlvr.estimator={critics}"
        )
    _check_estimator_only_options(rl, estimator)
    if rl.beta < 0:
        raise RLConfigError(f"rlvr.beta must be >= 0, got {rl.beta}")
    if not 0 <= rl.clip_eps < 1:
        raise RLConfigError(f"rlvr.clip_eps must be in [0, 1), got {rl.clip_eps}")
    if rl.clip_eps_high is not None and rl.clip_eps_high < rl.clip_eps:
        raise RLConfigError(
            f"rlvr.clip_eps_high must be >= rlvr.clip_eps ({rl.clip_eps}) or null, got {rl.clip_eps_high}"
        )
    if rl.value_clip < 0:
        raise RLConfigError(f"rlvr.value_clip must be >= 0, got {rl.value_clip}")
    if rl.tis_cap is not None and rl.tis_cap <= 0:
        raise RLConfigError(f"rlvr.tis_cap must be > 0 (or null: off), got {rl.tis_cap}")
    if rl.drop_constant_groups and ro.samples_per_prompt < 2:
        raise RLConfigError(
            "rlvr.drop_constant_groups needs rollout.samples_per_prompt >= 2 (groups of samples)"
        )
    if rl.loss_constant is not None and rl.loss_aggregation != "constant":
        raise RLConfigError("rlvr.loss_constant applies to rlvr.loss_aggregation=constant only")
    if rl.loss_constant is not None and rl.loss_constant < 1:
        raise RLConfigError(f"rlvr.loss_constant must be a positive number of tokens, got {rl.loss_constant}")
    rl.kl_placement = placement
    rl.kl_kind = rl.kl_kind or DEFAULT_KL_KIND[placement]
    if rl.loss_aggregation == "constant":
        rl.loss_constant = rl.loss_constant or ro.max_new_tokens  # Dr. GRPO: the generation budget


def _estimator(name: str) -> Estimator:
    if name not in estimators.ESTIMATORS:
        raise RLConfigError(
            f"rlvr.estimator must be one of {', '.join(sorted(estimators.ESTIMATORS))}; got {name!r}"
        )
    return estimators.get_estimator(name)


def _check_estimator_only_options(rl: RLVROptions, estimator: Estimator) -> None:
    """An ``rlvr.*`` option that only other estimators read keeps its default (it would be ignored)."""
    readers: dict[str, list[str]] = {}
    for name, entry in sorted(estimators.ESTIMATORS.items()):
        for path in entry.options.values():
            readers.setdefault(path, []).append(name)
    defaults = RLVROptions()
    for path, names in readers.items():
        section, _, field = path.partition(".")
        if section != "rlvr" or path in estimator.options.values():
            continue
        value = getattr(rl, field)
        if value != getattr(defaults, field):
            raise RLConfigError(f"rlvr.{field}={value} applies to rlvr.estimator={'|'.join(names)} only")
