"""engine/mcore_compat.py is still needed: each test loads a DistributedOptimizer checkpoint on the
installed megatron-core (torch AdamW, no Apex/TE) with one workaround turned off and asserts that
the failure it works around still happens.

When one of these fails after a megatron-core upgrade, read the message: megatron-core fixed that
problem, so delete the workaround it names (and its test); see mcore_compat's docstring.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORKERS, run_torchrun

pytestmark = pytest.mark.distributed

FIXED = "megatron-core no longer needs mcore_compat.{}: delete it, its call and this test"


@pytest.fixture(scope="module")
def loads(tmp_path_factory):
    """What the worker saw for each case (one torchrun for all of them)."""
    tmp = tmp_path_factory.mktemp("mcore_compat")
    out = tmp / "out.json"
    run_torchrun(WORKERS / "mcore_compat_worker.py", 1, ["--ckpt", str(tmp / "ckpt"), "--out", str(out)])
    return json.loads(out.read_text())


def test_the_worker_exercises_the_distributed_optimizer_with_torch_adamw(loads):
    from megatron.core.optimizer import distrib_optimizer

    assert loads["optimizer"] == "DistributedOptimizer"
    assert not distrib_optimizer.HAVE_APEX_OR_TE  # with Apex/TE megatron-core takes other paths
    steps, tensors = loads["saved"]
    assert steps == [2.0] * len(steps) and tensors == len(steps) > 1


def test_with_every_workaround_each_parameter_keeps_its_own_step(loads):
    steps, tensors = loads["all_on"]["after_one_step"]
    assert steps == [3.0] * len(steps) and tensors == len(steps)


def test_a_fresh_distributed_optimizer_still_needs_its_adam_state_materialized(loads):
    case = loads["without_materialize"]
    assert "error" in case, FIXED.format("materialize_optimizer_state")
    # DistributedOptimizer.state_dict() reads every parameter's AdamW step: none exists yet
    assert case["error"].startswith("AssertionError")
    assert case["raised_in"] == "megatron/core/optimizer/distrib_optimizer.py:state_dict"


def test_loading_parameter_state_still_copies_a_step_the_checkpoint_does_not_hold(loads):
    case = loads["without_step_kept_aside"]
    assert "error" in case, FIXED.format("torch_adam_step_kept_aside")
    assert case["error"] == "KeyError: 'step'"
    assert (
        case["raised_in"]
        == "megatron/core/optimizer/distrib_optimizer.py:_set_main_param_and_optimizer_states"
    )


def test_a_load_still_shares_one_step_tensor_between_all_parameters(loads):
    """The bug of commit 88f680a: one ``step`` tensor for every parameter, advanced in place once
    per parameter by AdamW, so one step after the resume each parameter is at 2 + n, not 3."""
    case = loads["without_unshare"]
    steps, tensors = case["loaded"]
    assert tensors == 1 < len(steps), FIXED.format("unshare_adam_steps")
    after, _ = case["after_one_step"]
    assert after == [2.0 + len(steps)] * len(steps)
