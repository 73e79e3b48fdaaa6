"""One PPO / GRPO update from the same rollouts gives the same numbers at TP2 and PP2 as at TP1."""

import pytest
import torch

from tests.helpers import WORKERS, rel_diff, run_torchrun

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_ppo_step_matches_tp1(hf_llama, tmp_path, estimator):
    res = {}
    for name, nproc, args in [("tp1", 1, []), ("tp2", 2, ["--tp", "2"]), ("pp2", 2, ["--pp", "2"])]:
        out = tmp_path / f"{name}.pt"
        run_torchrun(
            WORKERS / "ppo_step_worker.py",
            nproc,
            ["--hf", str(hf_llama), "--estimator", estimator, "--out", str(out), *args],
        )
        res[name] = torch.load(out)
    ref = res["tp1"]
    assert ref["updates"]["policy/loss"] != 0.0
    for name in ("tp2", "pp2"):
        got = res[name]
        assert got["stats"]["kl"] == pytest.approx(ref["stats"]["kl"], abs=1e-6)
        assert got["stats"]["entropy"] == pytest.approx(ref["stats"]["entropy"], rel=1e-5)
        assert torch.allclose(got["advantages"], ref["advantages"], atol=1e-5)
        for key, value in ref["updates"].items():
            assert got["updates"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        for key in ref["weights"]:
            assert rel_diff(got["weights"][key], ref["weights"][key]) < 1e-5, key
