"""kill -9 mid-SFT, resume -> the same loss sequence and bit-identical final weights."""

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import full_set_only, run_sft_tp2, sft_losses

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@full_set_only("FAULTS", "CI time budget; CI's fault sample kills SFT during a save and at random")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kill9_then_resume_is_exact(tmp_path, dtype):
    """bf16: Megatron's mixed-precision optimizer; its fp32 main copies must come back exactly."""
    cache = tmp_path / "cache"
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    precision = f"precision.params_dtype={dtype}"
    done = run_sft_tp2(straight, cache, precision)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = run_sft_tp2(crashed, cache, precision, fault="kill_after_step:3")
    assert killed.returncode != 0  # SIGKILL after step 3 (last checkpoint: step 2)
    assert [s for s, *_ in sft_losses(crashed)] == [1, 2, 3]
    resumed = run_sft_tp2(crashed, cache, precision, "checkpoint.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[resume] resuming from" in resumed.stdout and "step_0000002" in resumed.stdout

    assert sft_losses(crashed) == sft_losses(
        straight
    )  # step 3 re-run from the step-2 checkpoint, same numbers
    a, b = (
        load_file(str(straight / "hf" / "model.safetensors")),
        load_file(str(crashed / "hf" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [loss for _, loss, *_ in sft_losses(straight)]
    assert losses[-1] < losses[0]
