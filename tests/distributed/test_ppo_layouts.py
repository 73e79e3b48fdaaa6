"""One PPO / GRPO update from the same rollouts gives the same numbers at TP2 and PP2 as at TP1."""

import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, WORKERS, rel_diff, worker_result

pytestmark = pytest.mark.distributed


def _steps(hf, tmp_path, estimator, layouts, extra=()):
    argv = ["--hf", str(hf), "--estimator", estimator]
    return {
        name: worker_result(
            WORKERS / "ppo_step_worker.py", nproc, [*argv, *args, *extra], tmp_path / f"{name}.pt"
        )
        for name, nproc, args in layouts
    }


# GRPO runs at sampling temperature 0.7 (log-probs of logits / T in every phase), PPO at 1.0
TEMPERATURE = {"gae": [], "grpo": ["--temperature", "0.7"]}


def _assert_same_step(res, names):
    ref = res["tp1"]
    assert ref["updates"]["policy/loss"] != 0.0
    for name in names:
        got = res[name]
        assert got["stats"]["kl"] == pytest.approx(ref["stats"]["kl"], abs=1e-6)
        assert got["stats"]["entropy"] == pytest.approx(ref["stats"]["entropy"], rel=1e-5)
        assert torch.allclose(got["advantages"], ref["advantages"], atol=1e-5)
        for key, value in ref["updates"].items():
            assert got["updates"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        for key in ref["weights"]:
            assert rel_diff(got["weights"][key], ref["weights"][key]) < 1e-5, key


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_ppo_step_matches_tp1(hf_llama, tmp_path, estimator):
    layouts = [("tp1", 1, []), ("tp2", 2, ["--tp", "2"]), ("pp2", 2, ["--pp", "2"])]
    _assert_same_step(_steps(hf_llama, tmp_path, estimator, layouts, TEMPERATURE[estimator]), ("tp2", "pp2"))


def test_fused_log_probs_equal_the_output_layer_path(hf_llama, tmp_path):
    """One GRPO step at rollout temperature 0.7 with train.fused_log_probs (default) and false:
    the log-probs behind the KL, entropy and advantages, every update metric and the new weights
    agree (TP1 and TP2, where the fused head splits the vocabulary)."""
    layouts = [
        ("tp1", 1, []),
        ("unfused", 1, ["--unfused"]),
        ("tp2_unfused", 2, ["--tp", "2", "--unfused"]),
    ]
    res = _steps(hf_llama, tmp_path, "grpo", layouts, TEMPERATURE["grpo"])
    assert [res[n]["paths"] for n, _, _ in layouts] == [["fused"], ["logits"], ["logits"]]
    _assert_same_step(res, ("unfused", "tp2_unfused"))


@pytest.mark.vllm
def test_ppo_step_on_real_engine_rollouts_matches_tp1(tmp_path):
    """The same check on a batch a real vLLM CPU engine sampled from the embedded tiny model and the
    verifiers scored (shipped RLVR prompts, so the rows have real prompt/response lengths and EOS)."""
    tiny, batch = tmp_path / "tiny", tmp_path / "rollouts.json"
    run = {"cwd": REPO, "check": True, "capture_output": True, "timeout": 600}
    subprocess.run([sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(tiny)], **run)
    subprocess.run(
        [sys.executable, str(WORKERS / "vllm_rollouts.py"), "--hf", str(tiny), "--out", str(batch)], **run
    )
    layouts = [("tp1", 1, []), ("tp2", 2, ["--tp", "2"])]
    _assert_same_step(_steps(tiny, tmp_path, "gae", layouts, ["--rollouts", str(batch)]), ("tp2",))
