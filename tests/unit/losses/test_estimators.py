"""The advantage-estimator registry: each entry declares its needs, is called with exactly them,
and a malformed entry is refused when it is built."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron_tulu.losses import estimators
from megatron_tulu.losses.estimators import (
    BATCH_INPUTS,
    DEFAULT_KL_KIND,
    Estimator,
    config_value,
    get_estimator,
    register_estimator,
)
from megatron_tulu.losses.registry import UnknownNameError


def test_the_shipped_estimators_declare_their_needs():
    gae, grpo = get_estimator("gae"), get_estimator("grpo")
    assert (gae.needs_critic, gae.needs_groups, gae.default_kl_placement) == (True, False, "reward")
    assert (grpo.needs_critic, grpo.needs_groups, grpo.default_kl_placement) == (False, True, "loss")
    assert gae.kl_placements == ("reward", "loss")  # it reads the per-token rewards
    assert grpo.kl_placements == ("loss",)  # advantages from the scores alone: a reward penalty is lost
    assert dict(gae.options) == {"gamma": "rlvr.gamma", "lam": "rlvr.lam"}
    assert dict(grpo.options) == {"group_size": "rollout.samples_per_prompt", "std": "rlvr.grpo_std"}
    assert DEFAULT_KL_KIND == {"reward": "k1", "loss": "k3"}


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(UnknownNameError, match="unknown advantage estimator 'ppo'; registered: gae, grpo"):
        get_estimator("ppo")


def test_an_estimator_is_called_with_exactly_its_declared_inputs_and_options():
    seen = {}

    def spy(*, scores, mask, k, scale=2.0):
        seen.update(scores=scores, mask=mask, k=k, scale=scale)
        return scores.unsqueeze(1) * mask * k * scale, None

    entry = Estimator(spy, inputs=("scores", "mask"), options={"k": "rollout.samples_per_prompt"})
    cfg = SimpleNamespace(rollout=SimpleNamespace(samples_per_prompt=3), rlvr=SimpleNamespace(gamma=0.5))
    batch = {name: None for name in BATCH_INPUTS}  # what the trainer offers; the spy takes two
    batch.update(scores=torch.tensor([1.0, -1.0]), mask=torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    adv, returns = entry.estimate(batch, cfg)
    assert set(seen) == {"scores", "mask", "k", "scale"} and seen["k"] == 3 and seen["scale"] == 2.0
    torch.testing.assert_close(adv, torch.tensor([[6.0, 0.0], [-6.0, -6.0]]))  # 3 x 2 x score on the mask
    assert returns is None
    assert config_value(cfg, "rlvr.gamma") == 0.5


def _fn(*, scores, mask, group_size):
    return scores, None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inputs": ("scores", "mask", "logits")}, r"inputs \['logits'\] are not batch inputs"),
        ({"inputs": ("scores",)}, r"_fn: its parameters \['mask'\] are not declared$"),
        (
            {"options": {"group_size": "rollout.samples_per_prompt", "eps": "rlvr.eps"}},
            r"_fn: declared \['eps'\] are not its parameters$",
        ),
        ({"needs_critic": True}, "needs a critic but does not read values"),
        ({"default_kl_placement": "reward"}, r"default_kl_placement='reward'; it can take \('loss',\)"),
    ],
)
def test_a_malformed_entry_is_refused_when_built(kwargs, message):
    entry = {"inputs": ("scores", "mask"), "options": {"group_size": "rollout.samples_per_prompt"}}
    with pytest.raises(ValueError, match=message):
        Estimator(_fn, **{**entry, **kwargs})


def test_a_name_registers_once(monkeypatch):
    monkeypatch.setattr(estimators, "ESTIMATORS", dict(estimators.ESTIMATORS))
    entry = Estimator(_fn, inputs=("scores", "mask"), options={"group_size": "rollout.samples_per_prompt"})
    assert register_estimator("toy", entry) is entry and get_estimator("toy") is entry
    with pytest.raises(ValueError, match="advantage estimator 'toy' is already registered"):
        register_estimator("toy", entry)
    with pytest.raises(ValueError, match="'gae' is already registered"):
        register_estimator("gae", entry)
