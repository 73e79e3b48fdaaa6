"""DPO: TP2/PP2 sequence log-probs and loss equal TP1; gradients invariant to micro-batch/DP split."""

import pytest
import torch

from tests.helpers import WORKERS, rel_diff, run_torchrun

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    layouts = {
        "tp1_mb1": (1, ["--micro-batch", "1"]),
        "tp1_mb8": (1, ["--micro-batch", "8"]),
        "tp1_separate": (1, ["--mode", "separate"]),
        "dp2": (2, ["--micro-batch", "2"]),
        "tp2": (2, ["--tp", "2"]),
        "pp2": (2, ["--pp", "2"]),
        "tp1_unfused": (1, ["--unfused"]),
        "tp1_separate_unfused": (1, ["--mode", "separate", "--unfused"]),
    }
    res = {}
    for name, (nproc, args) in layouts.items():
        path = out / f"{name}.pt"
        run_torchrun(WORKERS / "dpo_step_worker.py", nproc, ["--hf", str(tiny), "--out", str(path), *args])
        res[name] = torch.load(path)
    return res


@pytest.mark.parametrize(
    "name", ["tp1_mb8", "tp1_separate", "dp2", "tp2", "pp2", "tp1_unfused", "tp1_separate_unfused"]
)
def test_matches_tp1(runs, name):
    ref, got = runs["tp1_mb1"], runs[name]
    for side in ("chosen", "rejected"):
        assert torch.allclose(got["ref"][side], ref["ref"][side], rtol=1e-5, atol=0), side
        assert torch.equal(got["ref"][f"{side}_tokens"], ref["ref"][f"{side}_tokens"])
    assert got["metrics"]["loss"] == pytest.approx(ref["metrics"]["loss"], rel=1e-5)
    assert got["metrics"]["reward_margin"] == pytest.approx(
        ref["metrics"]["reward_margin"], rel=1e-4, abs=1e-6
    )
    for key in ref["grads"]:
        assert rel_diff(got["grads"][key], ref["grads"][key]) < 1e-5, key


def test_runs_took_the_log_prob_path_asked_for(runs):
    assert runs["tp1_mb1"]["paths"] == runs["tp1_separate"]["paths"] == ["fused"]  # the default
    assert runs["tp1_unfused"]["paths"] == runs["tp1_separate_unfused"]["paths"] == ["logits"]


def test_loss_is_informative(runs):
    # perturbed reference: not the trivial log(2) of an untrained pair, and non-zero gradients
    assert runs["tp1_mb1"]["metrics"]["loss"] != pytest.approx(0.6931, abs=1e-3)
    assert all(g.abs().sum() > 0 for g in runs["tp1_mb1"]["grads"].values())
