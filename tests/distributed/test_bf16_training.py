"""bf16 training on CPU runs Megatron's own optimizers, as on GPU, and resumes bit for bit: the
mixed-precision optimizer's fp32 main copies are checkpointed and restored, not re-derived from
bf16 weights; the DistributedOptimizer (the GPU default, here over gloo at DP2) resumes too.

Before: the local spec's torch norms stayed fp32 in a "bf16" model (Megatron's Float16Module,
which we do not use, casts them), and the non-distributed mixed-precision optimizer's checkpoint
then failed ("Param id 18 does not match any model sharded param"); on CPU the optimizer refused
bf16 parameters outright (a CUDA type check, answered by cpu_compat item 7).
"""

import pytest
import torch

from tests.helpers import WORKERS, run_torchrun

pytestmark = pytest.mark.distributed


# (worker arguments, the Megatron optimizer they select)
OPTIMIZERS = {
    "mixed_precision_tp2": (["--tp", "2"], "Float16OptimizerWithFloat16Params"),
    # ZeRO-1 over DP2: each rank holds half of the fp32 main copies and Adam state
    "distributed_dp2": (["--tp", "1", "--distributed-optimizer"], "DistributedOptimizer"),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_bf16_checkpoint_resumes_bit_for_bit(hf_llama, tmp_path, optimizer):
    """distributed_dp2 failed before mcore_compat.unshare_adam_steps: the loaded AdamW ``step`` was
    one tensor shared by every parameter, advanced once per parameter (step 55 instead of 3)."""
    layout, expected = OPTIMIZERS[optimizer]
    ckpt = tmp_path / "ckpt"
    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    common = ["--hf", str(hf_llama), *layout, "--ckpt", str(ckpt)]
    run_torchrun(WORKERS / "bf16_resume_worker.py", 2, [*common, "--out", str(straight)])
    run_torchrun(WORKERS / "bf16_resume_worker.py", 2, [*common, "--resume", "--out", str(resumed)])
    a, b = torch.load(straight), torch.load(resumed)

    assert a["optimizer"] == b["optimizer"] == expected
    assert a["param_dtypes"] == ["torch.bfloat16"]  # norms included
    assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]
    assert a["weights"].keys() == b["weights"].keys()
    for name in a["weights"]:
        assert a["weights"][name].dtype == torch.bfloat16, name
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    if a["main_params"] is None:  # distributed: the main copies are DP shards (step 2 used them)
        return
    assert a["main_params"].keys() == a["weights"].keys()
    for name in a["main_params"]:
        assert a["main_params"][name].dtype == torch.float32, name
        assert torch.equal(a["main_params"][name], b["main_params"][name]), name
    # the fp32 main copies hold more than their bf16 rounding, so re-deriving them on load from
    # the bf16 weights (instead of restoring them) would have changed step 2
    up = a["main_params"]["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(up, up.to(torch.bfloat16).float())
