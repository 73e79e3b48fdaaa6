"""A value model whose layer count the learners' pipeline does not divide (the 405B preset's 8B value
model, 32 layers at PP14) is built with Megatron-Core's uneven first/last stages and computes the same
values as the unsplit model."""

from __future__ import annotations

import pytest
import torch

from megatron_tulu.config.validate import LayoutError, pipeline_stage_layers
from tests.helpers import WORKERS, make_hf_llama, rel_diff, run_torchrun

pytestmark = pytest.mark.distributed


def test_pipeline_stage_layers_rules():
    assert pipeline_stage_layers(126, 14) == [9] * 14  # the 405B policy: equal stages
    assert pipeline_stage_layers(32, 14) == [4] + [2] * 12 + [4]  # its 8B value model
    assert pipeline_stage_layers(5, 2) == [2, 3]
    assert sum(pipeline_stage_layers(30, 4)) == 30
    with pytest.raises(LayoutError, match="interleaved"):
        pipeline_stage_layers(5, 2, vpp=2)
    with pytest.raises(LayoutError, match="cannot fill"):
        pipeline_stage_layers(3, 8)


def test_five_layer_value_model_at_pp2_equals_pp1(tmp_path):
    hf = make_hf_llama(tmp_path / "rm", layers=5)
    outs = {}
    for pp in (1, 2):
        out = tmp_path / f"pp{pp}.pt"
        run_torchrun(
            WORKERS / "value_split_worker.py", pp, ["--hf", str(hf), "--pp", str(pp), "--out", str(out)]
        )
        outs[pp] = torch.load(out)
    assert outs[2]["layers_per_stage"] == [2, 3]
    assert rel_diff(outs[2]["values"], outs[1]["values"]) < 1e-5
